//! HCI transport: trouble-host as the central, on an HCI controller reached over TCP (H4, e.g.
//! Bumble's virtual controllers) or a serial port (an HCI UART dongle).
//!
//! trouble-host's futures are not `Send` and its runner must be polled all the time, so the
//! whole BLE host runs on a thread of its own (a single-threaded tokio runtime); [`HciLink`]
//! talks to it through channels.
//!
//! Spec syntax (`--hci`): `tcp:HOST:PORT`, `serial:/dev/ttyUSB0[@BAUD]` (default 1000000), or a
//! bare device path.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bt_hci_serial::SerialTransport;
use embassy_futures::select::{Either, Either3, select, select3};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embedded_io_adapters::tokio_1::FromTokio;
use ota_core::protocol::{
    CONTROL_CHAR_UUID, Characteristic as Ch, DATA_CHAR_UUID, LL_MAX_DATA_LEN, LL_MAX_TX_TIME_US,
    OTA_SERVICE_UUID,
};
use ota_gatt::{OtaPacketPool, OversizeGuard};
use tokio::sync::{mpsc, oneshot};
use trouble_host::prelude::*;
use trouble_host::scan::{LeAdvReportsIter, LeExtAdvReportsIter};

use crate::exit::{CliError, ExitCode};

/// Where the HCI controller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HciSpec {
    /// H4 over TCP: `host:port`.
    Tcp(String),
    /// H4 over a serial port at a baud rate.
    Serial { path: String, baud: u32 },
}

impl HciSpec {
    /// Parses `tcp:HOST:PORT`, `serial:PATH[@BAUD]` or a bare `/dev/...` path.
    pub fn parse(spec: &str) -> Result<HciSpec> {
        if let Some(addr) = spec.strip_prefix("tcp:") {
            let port_ok = addr
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(CliError::new(
                    ExitCode::Usage,
                    format!("`--hci tcp:HOST:PORT` needs a host and a port number (got `{spec}`)"),
                )
                .into());
            }
            return Ok(HciSpec::Tcp(addr.to_string()));
        }
        let path = spec.strip_prefix("serial:").unwrap_or(spec);
        if path.is_empty() || (!spec.starts_with("serial:") && !path.starts_with('/')) {
            return Err(CliError::new(
                ExitCode::Usage,
                format!(
                    "bad --hci `{spec}`: use tcp:HOST:PORT, serial:/dev/ttyUSB0[@BAUD] or a device path"
                ),
            )
            .into());
        }
        let (path, baud) = match path.rsplit_once('@') {
            Some((p, b)) => (
                p,
                b.parse().map_err(|_| {
                    CliError::new(
                        ExitCode::Usage,
                        format!("bad baud rate `{b}` in --hci `{spec}`"),
                    )
                })?,
            ),
            None => (path, 1_000_000),
        };
        Ok(HciSpec::Serial {
            path: path.to_string(),
            baud,
        })
    }
}

type Reader = FromTokio<Box<dyn tokio::io::AsyncRead + Unpin + Send>>;
type Writer = FromTokio<Box<dyn tokio::io::AsyncWrite + Unpin + Send>>;
/// The controller type both roles use (behind the guard the firmware uses too, which cuts ATT
/// PDUs longer than the device's MTU so they get an ATT error, not silence).
pub type HciController =
    ExternalController<OversizeGuard<SerialTransport<NoopRawMutex, Reader, Writer>>, 10>;

/// Opens the controller (H4 framing over TCP or a serial port).
pub async fn open_controller(spec: &HciSpec) -> Result<HciController> {
    let (reader, writer): (
        Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    ) = match spec {
        HciSpec::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
                CliError::new(
                    ExitCode::NoDevice,
                    format!("cannot reach the HCI controller at tcp:{addr}: {e}"),
                )
            })?;
            // Without this every small HCI packet waits for the peer's delayed ACK (~40 ms).
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        HciSpec::Serial { path, baud } => {
            use tokio_serial::SerialPortBuilderExt;
            let port = tokio_serial::new(path, *baud)
                .data_bits(tokio_serial::DataBits::Eight)
                .parity(tokio_serial::Parity::None)
                .stop_bits(tokio_serial::StopBits::One)
                .flow_control(tokio_serial::FlowControl::Hardware)
                .open_native_async()
                .map_err(|e| {
                    CliError::new(
                        ExitCode::NoDevice,
                        format!("cannot open the HCI serial port {path}: {e}"),
                    )
                })?;
            let (r, w) = tokio::io::split(port);
            (Box::new(r), Box::new(w))
        }
    };
    let transport = SerialTransport::new(FromTokio::new(reader), FromTokio::new(writer));
    Ok(ExternalController::new(OversizeGuard::new(transport)))
}

/// A link-layer event the central saw (for `--verbose` output and the tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkNote {
    Connected {
        mtu: u16,
    },
    DataLength {
        tx: u16,
        rx: u16,
    },
    Phy {
        tx: String,
        rx: String,
    },
    ConnParams {
        interval_us: u64,
    },
    /// Paired by LE Secure Connections, the link encrypted and authenticated.
    Paired,
    Disconnected,
}

enum Cmd {
    Write {
        ch: Ch,
        data: Vec<u8>,
        with_response: bool,
        reply: oneshot::Sender<Result<Result<(), u8>, String>>,
    },
    Read {
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    Reconnect {
        reply: oneshot::Sender<Result<u16, CliError>>,
    },
    Disconnect {
        reply: std::sync::mpsc::Sender<()>,
    },
}

/// A device connected through an HCI controller (trouble-host central).
pub struct HciLink {
    cmds: mpsc::UnboundedSender<Cmd>,
    notes: mpsc::UnboundedReceiver<Vec<u8>>,
    connected: Arc<AtomicBool>,
    mtu: u16,
    /// Link-layer events seen so far.
    #[allow(dead_code)]
    pub link_notes: Arc<std::sync::Mutex<Vec<LinkNote>>>,
    /// Drop the link just before these data writes (1-based), like `flash --disconnect-at`.
    pub disconnect_at: Vec<u32>,
    data_writes: u32,
    /// Links dropped on purpose so far.
    pub forced_disconnects: u32,
}

/// Connects to the OTA device `selector` names (name or address; default: the first one
/// advertising the OTA service) through the HCI controller at `spec`.
#[allow(dead_code)] // API for other callers; the commands pass a scan timeout
pub async fn connect_hci(spec: &str, selector: Option<&str>) -> Result<HciLink> {
    connect_hci_with(spec, selector, Duration::from_secs(10), None).await
}

/// [`connect_hci`] with a scan timeout, pairing with `passkey` (LE Secure Connections,
/// passkey entry) when given.
pub async fn connect_hci_with(
    spec: &str,
    selector: Option<&str>,
    scan_timeout: Duration,
    passkey: Option<u32>,
) -> Result<HciLink> {
    let spec = HciSpec::parse(spec)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (note_tx, note_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let connected = Arc::new(AtomicBool::new(false));
    let link_notes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ctx = Central {
        spec,
        selector: selector.map(str::to_string),
        scan_timeout,
        passkey,
        connected: connected.clone(),
        link_notes: link_notes.clone(),
        notes: note_tx,
    };
    std::thread::Builder::new()
        .name("hci-central".into())
        .spawn(move || {
            // On failure `ready_tx` is dropped unanswered: the caller reports the host stopped.
            let _ = super::run_ble_host(ctx.run(cmd_rx, ready_tx));
        })?;
    let mtu = match ready_rx.await {
        Ok(Ok(mtu)) => mtu,
        // The host thread says which exit code its failure means.
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(host_stopped()),
    };
    Ok(HciLink {
        cmds: cmd_tx,
        notes: note_rx,
        connected,
        mtu,
        link_notes,
        disconnect_at: Vec::new(),
        data_writes: 0,
        forced_disconnects: 0,
    })
}

/// A failure of the HCI host thread that exits with [`ExitCode::Failure`].
fn failed(message: String) -> CliError {
    CliError::new(ExitCode::Failure, message)
}

/// The HCI host thread ended: the controller closed its connection or the stack failed.
fn host_stopped() -> anyhow::Error {
    anyhow!(
        "the BLE host on the HCI controller stopped (the controller closed the connection?); \
         check the controller and run the command again: the fast protocol resumes"
    )
}

impl HciLink {
    /// Sends a command to the HCI host thread and waits for its answer.
    async fn ask<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Cmd,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.cmds.send(cmd(reply)).map_err(|_| host_stopped())?;
        rx.await
            .map_err(|_| host_stopped())?
            .map_err(|e| anyhow!(e))
    }

    /// Drops the link (the device sees a disconnection and advertises again).
    pub async fn disconnect(&mut self) {
        let (reply, rx) = std::sync::mpsc::channel();
        if self.cmds.send(Cmd::Disconnect { reply }).is_ok() {
            let _ =
                tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(4))).await;
        }
    }

    /// The link-layer events seen so far.
    #[allow(dead_code)]
    pub fn link_notes(&self) -> Vec<LinkNote> {
        self.link_notes.lock().unwrap().clone()
    }
}

impl super::Link for HciLink {
    fn att_mtu(&self) -> Option<u16> {
        Some(self.mtu)
    }

    async fn write(&mut self, ch: Ch, data: &[u8], with_response: bool) -> Result<Result<(), u8>> {
        if ch == Ch::Data {
            self.data_writes += 1;
            if self.disconnect_at.contains(&self.data_writes) {
                self.disconnect().await;
                self.forced_disconnects += 1;
                bail!(
                    "link dropped on purpose before data write {}",
                    self.data_writes
                );
            }
        }
        self.ask(|reply| Cmd::Write {
            ch,
            data: data.to_vec(),
            with_response,
            reply,
        })
        .await
    }

    async fn read_control(&mut self) -> Result<Vec<u8>> {
        self.ask(|reply| Cmd::Read { reply }).await
    }

    async fn notification(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        if timeout.is_zero() {
            return match self.notes.try_recv() {
                Ok(n) => Ok(Some(n)),
                Err(mpsc::error::TryRecvError::Empty) => Ok(None),
                Err(mpsc::error::TryRecvError::Disconnected) => Err(host_stopped()),
            };
        }
        match tokio::time::timeout(timeout, self.notes.recv()).await {
            Ok(Some(n)) => Ok(Some(n)),
            Ok(None) => Err(host_stopped()),
            Err(_) => Ok(None),
        }
    }

    async fn is_connected(&mut self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn data_writes(&self) -> Option<u32> {
        Some(self.data_writes)
    }

    async fn reconnect(&mut self) -> Result<()> {
        // Notifications of the old connection mean nothing any more.
        while self.notes.try_recv().is_ok() {}
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Reconnect { reply })
            .map_err(|_| host_stopped())?;
        self.mtu = rx.await.map_err(|_| host_stopped())??;
        Ok(())
    }
}

impl Drop for HciLink {
    fn drop(&mut self) {
        // Disconnect cleanly before the process exits: a controller whose host vanished
        // (Bumble's virtual one at least) keeps the connection, and the device would never
        // advertise again.
        if self.connected.load(Ordering::SeqCst) {
            let (reply, rx) = std::sync::mpsc::channel();
            if self.cmds.send(Cmd::Disconnect { reply }).is_ok() {
                let _ = rx.recv_timeout(Duration::from_secs(4));
            }
        }
    }
}

/// The central's state on its thread.
struct Central {
    spec: HciSpec,
    selector: Option<String>,
    scan_timeout: Duration,
    /// Pair with this passkey right after connecting.
    passkey: Option<u32>,
    connected: Arc<AtomicBool>,
    link_notes: Arc<std::sync::Mutex<Vec<LinkNote>>>,
    notes: mpsc::UnboundedSender<Vec<u8>>,
}

/// Picks the first advertiser that matches.
struct ScanHandler {
    selector: Option<String>,
    found: RefCell<Option<Address>>,
}

impl ScanHandler {
    fn consider(&self, kind: AddrKind, addr: BdAddr, data: &[u8]) {
        if self.found.borrow().is_some() {
            return;
        }
        let mut has_service = false;
        let mut name: Option<String> = None;
        for ad in AdStructure::decode(data).flatten() {
            match ad {
                AdStructure::CompleteServiceUuids128(uuids)
                | AdStructure::IncompleteServiceUuids128(uuids) => {
                    has_service |= uuids.iter().any(|u| *u == OTA_SERVICE_UUID.to_le_bytes())
                }
                AdStructure::CompleteLocalName(n) | AdStructure::ShortenedLocalName(n) => {
                    name = Some(String::from_utf8_lossy(n).into_owned())
                }
                _ => {}
            }
        }
        let matches = match &self.selector {
            None => has_service,
            Some(sel) => {
                let text = format_addr(&addr);
                text.eq_ignore_ascii_case(sel) || name.as_deref() == Some(sel.as_str())
            }
        };
        if matches {
            *self.found.borrow_mut() = Some(Address { kind, addr });
        }
    }
}

fn format_addr(addr: &BdAddr) -> String {
    let b = addr.raw();
    format!(
        "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        b[5], b[4], b[3], b[2], b[1], b[0]
    )
}

impl EventHandler for ScanHandler {
    fn on_adv_reports(&self, reports: LeAdvReportsIter) {
        for r in reports.flatten() {
            self.consider(r.addr_kind, r.addr, r.data);
        }
    }

    fn on_ext_adv_reports(&self, reports: LeExtAdvReportsIter) {
        for r in reports.flatten() {
            self.consider(r.addr_kind, r.addr, r.data);
        }
    }
}

/// What ended a connection.
enum SessionEnd {
    Disconnected,
    Reconnect(oneshot::Sender<Result<u16, CliError>>),
    Closed,
}

impl Central {
    /// Pairs by LE Secure Connections, typing `passkey` when the device asks for it; fails
    /// unless the link ends up encrypted and authenticated.
    async fn pair(
        &self,
        conn: &Connection<'_, OtaPacketPool>,
        passkey: u32,
    ) -> std::result::Result<(), CliError> {
        let refused = |m: String| CliError::new(ExitCode::Refused, m);
        if conn.security_level().is_ok_and(|l| l.authenticated()) {
            return Ok(());
        }
        conn.request_security()
            .map_err(|e| failed(format!("cannot start pairing: {e:?}")))?;
        let paired = embassy_time::with_timeout(embassy_time::Duration::from_secs(30), async {
            loop {
                match conn.next().await {
                    ConnectionEvent::PassKeyInput => {
                        conn.pass_key_input(passkey)
                            .map_err(|e| failed(format!("cannot enter the passkey: {e:?}")))?;
                    }
                    ConnectionEvent::PairingComplete { security_level, .. } => {
                        return if security_level.authenticated() {
                            Ok(())
                        } else {
                            Err(refused("pairing did not authenticate the link (no passkey was asked): the device does not require one".into()))
                        };
                    }
                    ConnectionEvent::PairingFailed(e) => {
                        return Err(refused(format!(
                            "pairing failed ({e:?}): is the passkey the one the device shows?"
                        )));
                    }
                    ConnectionEvent::Disconnected { reason } => {
                        return Err(failed(format!("the device dropped the link while pairing ({reason:?})")));
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| failed("pairing timed out after 30 s".into()))?;
        paired?;
        self.note(LinkNote::Paired);
        Ok(())
    }

    fn note(&self, n: LinkNote) {
        log::info!("hci: {n:?}");
        self.link_notes.lock().unwrap().push(n);
    }

    async fn run(
        self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        ready: oneshot::Sender<Result<u16, CliError>>,
    ) {
        let controller = match open_controller(&self.spec).await {
            Ok(c) => c,
            Err(e) => {
                let code = crate::exit::code_of(&e);
                let _ = ready.send(Err(CliError::new(code, format!("{e:#}"))));
                return;
            }
        };
        let mut resources: HostResources<OtaPacketPool, 1, 3> = HostResources::new();
        let address: [u8; 6] = {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                ^ std::process::id() as u64;
            let b = t.to_le_bytes();
            [b[0], b[1], b[2], b[3], b[4], b[5] | 0xC0]
        };
        let builder = trouble_host::new(controller, &mut resources)
            .set_random_address(Address::random(address));
        // A user at a keyboard: passkey entry when the device displays one.
        let builder = match self.passkey {
            Some(_) => builder.set_io_capabilities(IoCapabilities::KeyboardOnly),
            None => builder,
        };
        let stack = builder.build();
        let mut runner = stack.runner();
        let mut central = stack.central();
        let handler = ScanHandler {
            selector: self.selector.clone(),
            found: RefCell::new(None),
        };
        let work = async {
            let mut ready = Some(ready);
            loop {
                let end = match self
                    .session(&stack, &mut central, &handler, &mut cmds, &mut ready)
                    .await
                {
                    Ok(end) => end,
                    Err(e) => {
                        log::warn!("hci: {e}");
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(e));
                        }
                        SessionEnd::Disconnected
                    }
                };
                self.connected.store(false, Ordering::SeqCst);
                self.note(LinkNote::Disconnected);
                let reconnect = match end {
                    SessionEnd::Closed => return,
                    SessionEnd::Reconnect(r) => r,
                    SessionEnd::Disconnected => loop {
                        // Wait for the owner to ask for a reconnection.
                        match cmds.recv().await {
                            None => return,
                            Some(Cmd::Reconnect { reply }) => break reply,
                            Some(Cmd::Write { reply, .. }) => {
                                let _ = reply.send(Err("not connected".into()));
                            }
                            Some(Cmd::Read { reply }) => {
                                let _ = reply.send(Err("not connected".into()));
                            }
                            Some(Cmd::Disconnect { reply }) => {
                                let _ = reply.send(());
                            }
                        }
                    },
                };
                ready = Some(reconnect);
            }
        };
        let _ = select(runner.run_with_handler(&handler), work).await;
    }

    /// Scans, connects, discovers and serves commands until the link ends.
    async fn session<'a, 's>(
        &self,
        stack: &'a Stack<'s, HciController, OtaPacketPool>,
        central: &mut trouble_host::central::Central<'a, HciController, OtaPacketPool>,
        handler: &ScanHandler,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        ready: &mut Option<oneshot::Sender<Result<u16, CliError>>>,
    ) -> std::result::Result<SessionEnd, CliError> {
        // Scan until an advertiser matches.
        *handler.found.borrow_mut() = None;
        let target = {
            let mut scanner = Scanner::new(central);
            let config = ScanConfig {
                active: true,
                interval: embassy_time::Duration::from_millis(50),
                window: embassy_time::Duration::from_millis(50),
                ..Default::default()
            };
            let session = scanner
                .scan(&config)
                .await
                .map_err(|e| failed(format!("cannot scan: {e:?}")))?;
            let deadline = std::time::Instant::now() + self.scan_timeout;
            let found = loop {
                if let Some(a) = *handler.found.borrow() {
                    break Some(a);
                }
                if std::time::Instant::now() > deadline {
                    break None;
                }
                embassy_time::Timer::after_millis(10).await;
            };
            session.stop().await;
            found.ok_or_else(|| {
                CliError::new(
                    ExitCode::NoDevice,
                    match &self.selector {
                        Some(s) => format!("no device `{s}` found in {:?}", self.scan_timeout),
                        None => format!(
                            "no device advertising the OTA service found in {:?}",
                            self.scan_timeout
                        ),
                    },
                )
            })?
        };
        let connect = ConnectConfig {
            scan_config: ScanConfig {
                filter_accept_list: &[target],
                ..Default::default()
            },
            connect_params: RequestedConnParams {
                min_connection_interval: embassy_time::Duration::from_micros(7_500),
                max_connection_interval: embassy_time::Duration::from_millis(15),
                max_latency: 0,
                min_event_length: embassy_time::Duration::from_secs(0),
                max_event_length: embassy_time::Duration::from_secs(0),
                supervision_timeout: embassy_time::Duration::from_secs(4),
            },
        };
        let conn = embassy_time::with_timeout(
            embassy_time::Duration::from_secs(10),
            central.connect(&connect),
        )
        .await
        .map_err(|_| failed("connecting timed out".to_string()))?
        .map_err(|e| failed(format!("cannot connect: {e:?}")))?;
        if let Some(passkey) = self.passkey
            && let Err(e) = self.pair(&conn, passkey).await
        {
            // Leave the device free for the next run: disconnect and wait until the controllers
            // agree, rather than exit with the link still up on the device's side.
            conn.disconnect();
            let _ = embassy_time::with_timeout(embassy_time::Duration::from_secs(2), async {
                while !matches!(conn.next().await, ConnectionEvent::Disconnected { .. }) {}
            })
            .await;
            return Err(e);
        }
        let client = GattClient::<HciController, OtaPacketPool, 8>::new(stack, &conn)
            .await
            .map_err(|e| failed(format!("ATT MTU exchange failed: {e:?}")))?;
        let mtu = conn.att_mtu();
        let served = select(client.task(), async {
            let services = client
                .services_by_uuid(&Uuid::from(OTA_SERVICE_UUID))
                .await
                .map_err(|e| failed(format!("service discovery failed: {e:?}")))?;
            let service = services
                .first()
                .cloned()
                .ok_or_else(|| failed("the device has no OTA service".to_string()))?;
            let control: Characteristic<[u8]> = client
                .characteristic_by_uuid(&service, &Uuid::from(CONTROL_CHAR_UUID))
                .await
                .map_err(|e| failed(format!("no OTA Control characteristic: {e:?}")))?;
            let data: Characteristic<[u8]> = client
                .characteristic_by_uuid(&service, &Uuid::from(DATA_CHAR_UUID))
                .await
                .map_err(|e| failed(format!("no OTA Data characteristic: {e:?}")))?;
            let mut listener = client
                .subscribe(&control, false)
                .await
                .map_err(|e| failed(format!("cannot subscribe to OTA Control: {e:?}")))?;
            // The central sends the image: ask for long link-layer packets and the 2M PHY on
            // its side too (the completions arrive as connection events).
            if conn
                .update_data_length(stack, LL_MAX_DATA_LEN, LL_MAX_TX_TIME_US)
                .await
                .is_err()
            {
                log::warn!("hci: the controller refused data length 251");
            }
            if conn.set_phy(stack, PhyKind::Le2M).await.is_err() {
                log::warn!("hci: the controller refused the 2M PHY");
            }
            self.connected.store(true, Ordering::SeqCst);
            self.note(LinkNote::Connected { mtu });
            if let Some(r) = ready.take() {
                let _ = r.send(Ok(mtu));
            }
            loop {
                match select3(cmds.recv(), listener.next(), conn.next()).await {
                    Either3::First(None) => {
                        conn.disconnect();
                        return Ok(SessionEnd::Closed);
                    }
                    Either3::First(Some(cmd)) => match cmd {
                        Cmd::Write {
                            ch,
                            data: bytes,
                            with_response,
                            reply,
                        } => {
                            let c = match ch {
                                Ch::Control => &control,
                                Ch::Data => &data,
                            };
                            let r = if with_response {
                                match client.write_characteristic(c, &bytes).await {
                                    Ok(()) => Ok(Ok(())),
                                    Err(BleHostError::BleHost(trouble_host::Error::Att(code))) => {
                                        Ok(Err(code.to_u8()))
                                    }
                                    Err(e) => Err(format!("write failed: {e:?}")),
                                }
                            } else {
                                client
                                    .write_characteristic_without_response(c, &bytes)
                                    .await
                                    .map(Ok)
                                    .map_err(|e| format!("write failed: {e:?}"))
                            };
                            let _ = reply.send(r);
                        }
                        Cmd::Read { reply } => {
                            let mut buf = vec![0u8; 600];
                            let r = client
                                .read_characteristic(&control, &mut buf)
                                .await
                                .map(|n| buf[..n].to_vec())
                                .map_err(|e| format!("read failed: {e:?}"));
                            let _ = reply.send(r);
                        }
                        Cmd::Reconnect { reply } => {
                            conn.disconnect();
                            return Ok(SessionEnd::Reconnect(reply));
                        }
                        Cmd::Disconnect { reply } => {
                            conn.disconnect();
                            // Wait until the controller confirms, so a reconnection finds
                            // the device advertising again.
                            let _ = embassy_time::with_timeout(
                                embassy_time::Duration::from_secs(3),
                                async {
                                    loop {
                                        if let ConnectionEvent::Disconnected { .. } =
                                            conn.next().await
                                        {
                                            break;
                                        }
                                    }
                                },
                            )
                            .await;
                            let _ = reply.send(());
                            return Ok(SessionEnd::Disconnected);
                        }
                    },
                    Either3::Second(n) => {
                        let _ = self.notes.send(n.as_ref().to_vec());
                    }
                    Either3::Third(event) => match event {
                        ConnectionEvent::Disconnected { .. } => {
                            return Ok(SessionEnd::Disconnected);
                        }
                        ConnectionEvent::RequestConnectionParams(req) => {
                            let _ = req.accept(None, stack).await;
                        }
                        ConnectionEvent::DataLengthUpdated {
                            max_tx_octets,
                            max_rx_octets,
                            ..
                        } => self.note(LinkNote::DataLength {
                            tx: max_tx_octets,
                            rx: max_rx_octets,
                        }),
                        ConnectionEvent::PhyUpdated { tx_phy, rx_phy } => {
                            self.note(LinkNote::Phy {
                                tx: format!("{tx_phy:?}"),
                                rx: format!("{rx_phy:?}"),
                            })
                        }
                        ConnectionEvent::ConnectionParamsUpdated { conn_interval, .. } => self
                            .note(LinkNote::ConnParams {
                                interval_us: conn_interval.as_micros(),
                            }),
                        _ => {}
                    },
                }
            }
        })
        .await;
        match served {
            Either::First(_) => Ok(SessionEnd::Disconnected),
            Either::Second(r) => r,
        }
    }
}
