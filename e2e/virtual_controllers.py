#!/usr/bin/env python3
"""Virtual BLE controllers for end-to-end tests, without any Bluetooth hardware.

Starts N Bumble virtual controllers on one shared virtual link (`LocalLink`), each
reachable as HCI H4 over TCP on 127.0.0.1. A host (trouble-host over TCP, or a Bumble
host with `tcp-client:127.0.0.1:PORT`) connects to one port; the hosts on the other ports
see it advertise, connect to it and exchange data over the virtual link.

    python e2e/virtual_controllers.py                  # 2 controllers on free ports
    python e2e/virtual_controllers.py --count 3
    python e2e/virtual_controllers.py --ports 9001 9002 --acl-size 27

The first line on stdout is always the ports as JSON, e.g. `{"ports":[40123,40124]}`,
printed once every port listens. Logs go to stderr. The process runs until it gets
SIGINT/SIGTERM or its stdin reaches end of file (so a test that spawns it with a pipe
for stdin cleans it up by dropping the pipe, even if the test dies); `--no-stdin` turns
the stdin watch off for use from a shell.

Bumble's controller (checked against bumble 0.0.236) differs from a real controller
in ways that break other hosts; `RealisticController` below fixes these:

- It hands every L2CAP PDU to its host as one ACL packet, however long. bt-hci's
  receive buffer holds 259 bytes, so anything above an ATT MTU of 251 is lost.
  Here controller-to-host ACL data is fragmented at `--acl-size` bytes (default 251,
  27 is the other common value) with proper packet-boundary flags; the same size is
  reported by (LE) Read Buffer Size for the host-to-controller direction.
- It has no handler for LE Set Data Length or LE Set PHY, and its Read PHY always
  answers 1M. Here Set Data Length answers Command Complete and sends an LE Data
  Length Change event to both hosts of the connection; Set PHY answers Command Status,
  then sends an LE PHY Update Complete event to both hosts; Read PHY returns the PHY
  the connection uses; Set Default PHY is stored and constrains later Set PHY choices
  made by the peer.
- A command it does not handle gets no reply at all when it expects a Command Status
  (a host with one command credit then stalls forever). Here every unhandled command
  gets an "Unknown HCI Command" (0x01) reply: Command Complete for commands Bumble
  knows to complete that way, Command Status otherwise.

There is still no radio timing, no flow control beyond Number Of Completed Packets and
no packet loss: data moves as fast as Python runs. HCI Reset does not reset the link or
drop connections, so start a fresh process for every test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Sequence

from bumble import hci
from bumble.core import PhysicalTransport
from bumble.controller import Connection, Controller
from bumble.link import LocalLink
from bumble.transport.tcp_server import open_tcp_server_transport_with_socket

logger = logging.getLogger("virtual_controllers")

#: Largest LL data PDU payload (Data Length Extension), and the largest ACL fragment
#: size offered here (fits the 259-byte receive buffer of bt-hci with its headers).
MAX_LE_OCTETS = 251
MIN_LE_OCTETS = 27
MIN_LE_TIME_US = 0x0148
MAX_LE_TIME_US = 0x4290

# PHY choice order when several PHYs are allowed: fastest first.
_PHY_PREFERENCE = (
    (hci.PhyBit.LE_2M, hci.Phy.LE_2M),
    (hci.PhyBit.LE_1M, hci.Phy.LE_1M),
    (hci.PhyBit.LE_CODED, hci.Phy.LE_CODED),
)
_ALL_PHY_BITS = int(hci.PhyBit.LE_1M | hci.PhyBit.LE_2M | hci.PhyBit.LE_CODED)


def max_time_us(octets: int, phy: int) -> int:
    """Air time in µs of a data PDU of `octets` payload bytes on `phy` (coded: S=8)."""
    if phy == hci.Phy.LE_2M:
        time = (octets + 15) * 4
    elif phy == hci.Phy.LE_CODED:
        time = 2704 + (octets - MIN_LE_OCTETS) * 64
    else:
        time = (octets + 14) * 8
    return max(MIN_LE_TIME_US, min(MAX_LE_TIME_US, time))


@dataclasses.dataclass
class LinkParams:
    """One side's view of the LL parameters of a connection."""

    connection: Connection
    tx_octets: int
    tx_phy: int = hci.Phy.LE_1M
    rx_phy: int = hci.Phy.LE_1M


class RealisticController(Controller):
    """A Bumble `Controller` that fragments ACL data and answers link-tuning commands."""

    def __init__(self, name: str, *, acl_size: int = MAX_LE_OCTETS, **kwargs) -> None:
        if not MIN_LE_OCTETS <= acl_size <= MAX_LE_OCTETS:
            raise ValueError(f"acl_size must be {MIN_LE_OCTETS}..{MAX_LE_OCTETS}")
        super().__init__(name, **kwargs)
        self.acl_size = acl_size
        # Buffer sizes the host reads; the host fragments its own ACL data to them.
        self.acl_data_packet_length = acl_size
        self.le_acl_data_packet_length = acl_size
        # A controller with the Data Length Extension feature supports 251 octets.
        self.supported_max_tx_octets = MAX_LE_OCTETS
        self.supported_max_rx_octets = MAX_LE_OCTETS
        self.supported_max_tx_time = max_time_us(MAX_LE_OCTETS, hci.Phy.LE_CODED)
        self.supported_max_rx_time = max_time_us(MAX_LE_OCTETS, hci.Phy.LE_CODED)
        self._link_params: dict[int, LinkParams] = {}

    # ------------------------------------------------------------------ helpers

    def link_params(self, connection: Connection) -> LinkParams:
        """This side's LL parameters of `connection` (created on first use)."""
        params = self._link_params.get(connection.handle)
        if params is None or params.connection is not connection:
            params = LinkParams(connection, tx_octets=self.suggested_max_tx_octets)
            self._link_params[connection.handle] = params
        return params

    def peer_of(
        self, connection: Connection
    ) -> tuple[RealisticController, Connection] | None:
        """The controller and connection object at the other end of `connection`."""
        peer = self.link.find_le_controller(connection.peer_address)
        if not isinstance(peer, RealisticController):
            return None
        peer_connection = peer.le_connections.get(connection.self_address)
        if peer_connection is None:
            return None
        return peer, peer_connection

    def _default_phy_bits(self, key: str, no_preference_bit: int) -> int:
        """PHYs this controller's host accepts by default ('tx_phys' or 'rx_phys')."""
        if self.default_phy["all_phys"] & no_preference_bit:
            return _ALL_PHY_BITS
        return self.default_phy[key] or _ALL_PHY_BITS

    # ------------------------------------------------------- controller -> host

    def on_link_acl_data(self, sender_address, transport, data: bytes) -> None:
        """Deliver an L2CAP PDU from the link to the host in `acl_size` fragments."""
        connections = (
            self.le_connections
            if transport == PhysicalTransport.LE
            else self.classic_connections
        )
        connection = connections.get(sender_address)
        if connection is None:
            logger.warning("[%s] ACL data for unknown peer %s", self.name, sender_address)
            return
        for offset in range(0, max(len(data), 1), self.acl_size):
            fragment = data[offset : offset + self.acl_size]
            pb_flag = (
                hci.HCI_ACL_PB_FIRST_FLUSHABLE
                if offset == 0
                else hci.HCI_ACL_PB_CONTINUATION
            )
            self.send_hci_packet(
                hci.HCI_AclDataPacket(connection.handle, pb_flag, 0, len(fragment), fragment)
            )

    def on_le_disconnected(self, connection: Connection, reason: int) -> None:
        self._link_params.pop(connection.handle, None)
        super().on_le_disconnected(connection, reason)

    # ------------------------------------------------------------------ commands

    def on_packet(self, packet: bytes) -> None:
        try:
            parsed = hci.HCI_Packet.from_bytes(packet)
        except Exception as error:  # Bumble would drop it, leaving a host waiting
            logger.warning("[%s] malformed HCI packet %s: %s", self.name, packet.hex(), error)
            if len(packet) >= 3 and packet[0] == hci.HCI_COMMAND_PACKET:
                op_code = int.from_bytes(packet[1:3], "little")
                self._reply_status(
                    op_code,
                    hci.HCI_ErrorCode.INVALID_COMMAND_PARAMETERS_ERROR,
                    complete=issubclass(
                        hci.HCI_Command.command_classes.get(op_code, hci.HCI_Command),
                        hci.HCI_SyncCommand,
                    ),
                )
            return
        self.on_hci_packet(parsed)

    def _reply_status(self, op_code: int, status: int, *, complete: bool) -> None:
        """Reply to a command with only a status: Command Complete or Command Status."""
        if complete:
            self.send_hci_packet(
                hci.HCI_Command_Complete_Event(
                    num_hci_command_packets=1,
                    command_opcode=op_code,
                    return_parameters=hci.HCI_StatusReturnParameters(status),
                )
            )
        else:
            self._send_hci_command_status(status, op_code)

    def on_hci_command_packet(self, command: hci.HCI_Command) -> None:
        handler = getattr(self, f"on_{command.name.lower()}", None)
        if handler is None:
            self._reply_unknown(command)
            return
        try:
            result = handler(command)
        except Exception:
            logger.exception("[%s] handler for %s failed", self.name, command.name)
            self._reply_status(
                command.op_code,
                hci.HCI_ErrorCode.UNSPECIFIED_ERROR_ERROR,
                complete=isinstance(command, hci.HCI_SyncCommand),
            )
            return
        if isinstance(command, hci.HCI_SyncCommand):
            if result is None:
                logger.error("[%s] no return parameters for %s", self.name, command.name)
                result = hci.HCI_StatusReturnParameters(
                    hci.HCI_ErrorCode.UNSPECIFIED_ERROR_ERROR
                )
            self.send_hci_packet(
                hci.HCI_Command_Complete_Event(
                    num_hci_command_packets=1,
                    command_opcode=command.op_code,
                    return_parameters=result,
                )
            )
        elif result is not None:
            # Bumble's generic handler returns a status for an asynchronous command and
            # then sends nothing: reply with a Command Status carrying it.
            self._send_hci_command_status(result.status, command.op_code)

    def _reply_unknown(self, command: hci.HCI_Command) -> None:
        logger.warning("[%s] unsupported command %s", self.name, command.name)
        self._reply_status(
            command.op_code,
            hci.HCI_ErrorCode.UNKNOWN_HCI_COMMAND_ERROR,
            complete=isinstance(command, hci.HCI_SyncCommand),
        )

    def on_hci_le_set_data_length_command(
        self, command: hci.HCI_LE_Set_Data_Length_Command
    ) -> hci.HCI_StatusAndConnectionHandleReturnParameters:
        """Core Vol 4 Part E 7.8.33; the LL Data Length Update runs at once."""
        handle = command.connection_handle

        def reply(status: hci.HCI_ErrorCode):
            return hci.HCI_StatusAndConnectionHandleReturnParameters(
                status=status, connection_handle=handle
            )

        connection = self.find_le_connection_by_handle(handle)
        if connection is None:
            return reply(hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR)
        if not (
            MIN_LE_OCTETS <= command.tx_octets <= MAX_LE_OCTETS
            and MIN_LE_TIME_US <= command.tx_time <= MAX_LE_TIME_US
        ):
            return reply(hci.HCI_ErrorCode.INVALID_COMMAND_PARAMETERS_ERROR)
        self.link_params(connection).tx_octets = command.tx_octets
        # Events go out after the Command Complete (send_hci_packet uses call_soon).
        asyncio.get_running_loop().call_soon(self._data_length_changed, connection)
        return reply(hci.HCI_ErrorCode.SUCCESS)

    def _data_length_changed(self, connection: Connection) -> None:
        peer = self.peer_of(connection)
        if peer is None:
            return
        peer_controller, peer_connection = peer
        mine = self.link_params(connection)
        theirs = peer_controller.link_params(peer_connection)
        for controller, params, other, conn in (
            (self, mine, theirs, connection),
            (peer_controller, theirs, mine, peer_connection),
        ):
            tx = min(params.tx_octets, MAX_LE_OCTETS)
            rx = min(other.tx_octets, MAX_LE_OCTETS)
            controller.send_hci_packet(
                hci.HCI_LE_Data_Length_Change_Event(
                    connection_handle=conn.handle,
                    max_tx_octets=tx,
                    max_tx_time=max_time_us(tx, params.tx_phy),
                    max_rx_octets=rx,
                    max_rx_time=max_time_us(rx, params.rx_phy),
                )
            )

    def on_hci_le_read_phy_command(
        self, command: hci.HCI_LE_Read_PHY_Command
    ) -> hci.HCI_LE_Read_PHY_ReturnParameters:
        """Core Vol 4 Part E 7.8.47: the PHYs the connection uses now."""
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if connection is None:
            return hci.HCI_LE_Read_PHY_ReturnParameters(
                status=hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR,
                connection_handle=command.connection_handle,
                tx_phy=hci.Phy.LE_1M,
                rx_phy=hci.Phy.LE_1M,
            )
        params = self.link_params(connection)
        return hci.HCI_LE_Read_PHY_ReturnParameters(
            status=hci.HCI_ErrorCode.SUCCESS,
            connection_handle=command.connection_handle,
            tx_phy=params.tx_phy,
            rx_phy=params.rx_phy,
        )

    def on_hci_le_set_phy_command(self, command: hci.HCI_LE_Set_PHY_Command) -> None:
        """Core Vol 4 Part E 7.8.49: Command Status, then the LL PHY Update procedure."""
        connection = self.find_le_connection_by_handle(command.connection_handle)
        if connection is None:
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNKNOWN_CONNECTION_IDENTIFIER_ERROR, command.op_code
            )
            return None
        supported = _ALL_PHY_BITS
        tx_wanted = _ALL_PHY_BITS if command.all_phys & 1 else command.tx_phys
        rx_wanted = _ALL_PHY_BITS if command.all_phys & 2 else command.rx_phys
        if not tx_wanted or not rx_wanted or (tx_wanted | rx_wanted) & ~supported:
            self._send_hci_command_status(
                hci.HCI_ErrorCode.UNSUPPORTED_FEATURE_OR_PARAMETER_VALUE_ERROR
                if (tx_wanted | rx_wanted) & ~supported
                else hci.HCI_ErrorCode.INVALID_COMMAND_PARAMETERS_ERROR,
                command.op_code,
            )
            return None
        self._send_hci_command_status(hci.HCI_ErrorCode.SUCCESS, command.op_code)
        asyncio.get_running_loop().call_soon(
            self._phy_update, connection, tx_wanted, rx_wanted
        )
        return None

    def _phy_update(self, connection: Connection, tx_wanted: int, rx_wanted: int) -> None:
        mine = self.link_params(connection)
        peer = self.peer_of(connection)
        if peer is not None:
            peer_controller, peer_connection = peer
            # The peer's default preferences: its RX limits our TX and vice versa.
            tx_wanted &= peer_controller._default_phy_bits("rx_phys", 2)
            rx_wanted &= peer_controller._default_phy_bits("tx_phys", 1)

        def choose(wanted: int, current: int) -> int:
            for bit, phy in _PHY_PREFERENCE:
                if wanted & bit:
                    return phy
            return current  # no common PHY: keep the current one

        mine.tx_phy = choose(tx_wanted, mine.tx_phy)
        mine.rx_phy = choose(rx_wanted, mine.rx_phy)
        self.send_hci_packet(
            hci.HCI_LE_PHY_Update_Complete_Event(
                status=hci.HCI_ErrorCode.SUCCESS,
                connection_handle=connection.handle,
                tx_phy=mine.tx_phy,
                rx_phy=mine.rx_phy,
            )
        )
        if peer is not None:
            theirs = peer_controller.link_params(peer_connection)
            theirs.tx_phy, theirs.rx_phy = mine.rx_phy, mine.tx_phy
            peer_controller.send_hci_packet(
                hci.HCI_LE_PHY_Update_Complete_Event(
                    status=hci.HCI_ErrorCode.SUCCESS,
                    connection_handle=peer_connection.handle,
                    tx_phy=theirs.tx_phy,
                    rx_phy=theirs.rx_phy,
                )
            )


class VirtualControllers:
    """N `RealisticController`s on one `LocalLink`, each serving HCI H4 over TCP."""

    def __init__(self) -> None:
        self.link = LocalLink()
        self.controllers: list[RealisticController] = []
        self.transports: list = []
        self.ports: list[int] = []

    @classmethod
    async def start(
        cls,
        ports: Sequence[int] = (0, 0),
        *,
        host: str = "127.0.0.1",
        acl_size: int = MAX_LE_OCTETS,
    ) -> VirtualControllers:
        """Listen on `ports` (0 = a free port); the chosen ports are in `.ports`."""
        self = cls()
        try:
            for index, port in enumerate(ports):
                # proto must be IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted
                # sockets whose proto says TCP, and with Nagle on, a small HCI packet
                # written right after another one waits for the peer's delayed ACK
                # (about 40 ms per ATT request/response round trip).
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    sock.bind((host, port))
                except OSError:
                    sock.close()
                    raise
                transport = await open_tcp_server_transport_with_socket(sock)
                self.transports.append(transport)
                self.ports.append(sock.getsockname()[1])
                self.controllers.append(
                    RealisticController(
                        f"C{index}",
                        host_source=transport.source,
                        host_sink=transport.sink,
                        link=self.link,
                        acl_size=acl_size,
                    )
                )
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        for transport in self.transports:
            transport.server.close()  # Bumble's close() leaves the listener open
            await transport.close()
        self.transports.clear()


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once stdin reaches end of file (a blocking read in a daemon thread)."""

    def run() -> None:
        try:
            while sys.stdin.buffer.read1(4096):
                pass
        except (OSError, ValueError):
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=run, name="stdin-watch", daemon=True).start()


async def _main(args: argparse.Namespace) -> int:
    ports = args.ports if args.ports else [0] * args.count
    try:
        controllers = await VirtualControllers.start(
            ports, host=args.host, acl_size=args.acl_size
        )
    except OSError as error:
        print(f"virtual_controllers: cannot listen: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"ports": controllers.ports}, separators=(",", ":")), flush=True)
    logger.info(
        "%d controllers on %s:%s, ACL fragments of %d bytes",
        len(controllers.ports),
        args.host,
        controllers.ports,
        args.acl_size,
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if not args.no_stdin:
        _watch_stdin(loop, stop)
    await stop.wait()
    await controllers.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Bumble virtual BLE controllers on one virtual link, as HCI H4 over TCP."
    )
    parser.add_argument(
        "--ports",
        type=int,
        nargs="+",
        metavar="PORT",
        help="one TCP port per controller (0 = any free port); overrides --count",
    )
    parser.add_argument(
        "--count", type=int, default=2, help="number of controllers on free ports (default 2)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--acl-size",
        type=int,
        default=MAX_LE_OCTETS,
        help="largest ACL data payload per HCI packet, both directions (27..251, default 251)",
    )
    parser.add_argument(
        "--no-stdin", action="store_true", help="do not exit when stdin reaches end of file"
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="stderr log level (DEBUG shows every HCI packet)"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    if not MIN_LE_OCTETS <= args.acl_size <= MAX_LE_OCTETS:
        parser.error(f"--acl-size must be {MIN_LE_OCTETS}..{MAX_LE_OCTETS}")
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
