//! Link parameters, the client profiles, and packet airtime as the Core Specification defines it.
//!
//! Section numbers refer to the Bluetooth Core Specification 5.x (they are the same in 5.0
//! through 5.4 for everything cited here).

use std::time::Duration;

use crate::error::ParamError;

pub use ota_core::protocol::air::T_IFS_US;

/// Unit of the connection interval, in µs (1.25 ms).
///
/// Source: Core Spec 5.x Vol 6 Part B §4.5.1 (connection events: `connInterval` is a multiple
/// of 1.25 ms) and Vol 4 Part E §7.8.12 (HCI LE Create Connection, `Connection_Interval` in
/// units of 1.25 ms).
pub const CONN_INTERVAL_UNIT_US: u32 = 1250;

/// Shortest connection interval, in units of 1.25 ms (7.5 ms).
///
/// Source: Core Spec 5.x Vol 6 Part B §4.5.1 (`connInterval` from 7.5 ms to 4.0 s).
pub const MIN_CONN_INTERVAL_UNITS: u16 = 6;

/// Longest connection interval, in units of 1.25 ms (4.0 s).
///
/// Source: Core Spec 5.x Vol 6 Part B §4.5.1.
pub const MAX_CONN_INTERVAL_UNITS: u16 = 3200;

/// Smallest ATT MTU: the LE default.
///
/// Source: Core Spec 5.x Vol 3 Part F §3.2.8 (`ATT_MTU`, default 23 on LE).
pub const MIN_ATT_MTU: u16 = 23;

/// Shortest supervision timeout a central may ask for (100 ms).
///
/// Source: Core Spec 5.x Vol 4 Part E §7.8.12 (HCI LE Create Connection,
/// `Supervision_Timeout` from 0x000A to 0x0C80 in units of 10 ms: 100 ms to 32 s).
pub const MIN_SUPERVISION_TIMEOUT: Duration = Duration::from_millis(100);

/// Longest supervision timeout a central may ask for (32 s).
///
/// Source: Core Spec 5.x Vol 4 Part E §7.8.12.
pub const MAX_SUPERVISION_TIMEOUT: Duration = Duration::from_secs(32);

/// End-of-event margin of the profiles, in µs: a packet pair (and its trailing `T_IFS`) is only
/// started if it ends this long before the next anchor point. Defined, with its sources and the
/// assumption it is, in `ota_core::protocol::air`, where the device uses it too.
pub use ota_core::protocol::air::DEFAULT_EVENT_END_MARGIN_US;

/// Largest ATT MTU the model takes: a 512-byte attribute value plus the 5-byte header of a
/// prepared write, the largest any stack negotiates in practice (Android requests 517).
///
/// Source: Core Spec 5.x Vol 3 Part F §3.2.9 (attribute values are at most 512 octets) and
/// §3.4.6.1 (prepare write request header: opcode, handle, offset = 5 octets).
pub const MAX_ATT_MTU: u16 = 517;

/// Smallest LL data payload (no data length extension).
///
/// Source: Core Spec 5.x Vol 6 Part B §4.5.10 (`connMaxTxOctets` is 27 to 251; 27 is the
/// value before a Data Length Update).
pub const MIN_LL_PAYLOAD: u16 = 27;

/// Largest LL data payload (data length extension).
///
/// Source: Core Spec 5.x Vol 6 Part B §2.4 (data channel PDU payload up to 251 octets) and
/// §4.5.10.
pub const MAX_LL_PAYLOAD: u16 = 251;

/// L2CAP basic header: length (2) and channel ID (2).
///
/// Source: Core Spec 5.x Vol 3 Part A §3.1 (connection-oriented channels in basic L2CAP mode;
/// ATT runs on the fixed channel 0x0004).
pub const L2CAP_HEADER_LEN: u32 = ota_core::protocol::L2CAP_HEADER as u32;

/// ATT opcode (1) and attribute handle (2) in front of the value of a write request, write
/// command or notification.
///
/// Source: Core Spec 5.x Vol 3 Part F §3.4.5.1 (`ATT_WRITE_REQ`), §3.4.5.3 (`ATT_WRITE_CMD`),
/// §3.4.7.1 (`ATT_HANDLE_VALUE_NTF`).
pub const ATT_WRITE_HEADER_LEN: u32 = ota_core::protocol::ATT_WRITE_HEADER as u32;

/// Largest attribute value.
///
/// Source: Core Spec 5.x Vol 3 Part F §3.2.9.
pub const MAX_ATTRIBUTE_LEN: usize = 512;

pub use ota_core::protocol::air::{Phy, airtime_us, pair_us};

/// What the peripheral does with an ATT PDU that arrives while its receive queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueuePolicy {
    /// Link-layer flow control: the peripheral does not acknowledge the packet (NESN unchanged)
    /// and the central retransmits it in the next packet pair; nothing is lost.
    ///
    /// Source: Core Spec 5.x Vol 6 Part B §4.5.9 (acknowledgement and flow control).
    Stall,
    /// The peripheral host silently drops the PDU after the link layer acknowledged it; the
    /// central never learns. This is trouble-host 0.8's behaviour: its per-connection L2CAP
    /// receive channel drops when full (see `esp-rs-and-ble-notes.md`, "Hazard").
    Drop,
}

/// Receive queue depth of the profiles, in ATT PDUs: the window the device engine announces
/// by default (`ota_core::device::DeviceConfig::new`, `rx_queue_chunks = 32`), so a client
/// that respects the window never overruns it. 32 PDUs of 251 bytes is 8 KiB of device RAM.
pub const DEFAULT_RX_QUEUE_DEPTH: u16 = 32;

/// The central's TX buffer of the profiles, in ATT PDUs. Stacks hold a few controller ACL
/// buffers plus a host queue; 16 PDUs is enough to fill any profile's connection event
/// (at most 8 PDUs per event) while the client refills it.
pub const DEFAULT_CENTRAL_TX_BUFFER: u16 = 16;

/// The peripheral's TX buffer of the profiles, in notifications (trouble-host's default
/// packet pool holds 16 buffers, see `esp-rs-and-ble-notes.md`).
pub const DEFAULT_PERIPHERAL_TX_BUFFER: u16 = 16;

/// Parameters of one connection and of the device host behind it.
///
/// Build one from a profile ([`LinkParams::esp32_classic`], [`LinkParams::android`],
/// [`LinkParams::ios`], [`LinkParams::desktop`]) and change fields with struct update
/// syntax; [`Link::new`](crate::Link::new) checks them with [`LinkParams::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkParams {
    /// ATT MTU, 23..=517 (Core Spec 5.x Vol 3 Part F §3.2.8).
    pub att_mtu: u16,
    /// Connection interval in units of 1.25 ms, 6..=3200 (Vol 6 Part B §4.5.1): 6 = 7.5 ms,
    /// 9 = 11.25 ms, 12 = 15 ms, 24 = 30 ms.
    pub conn_interval_units: u16,
    /// PHY of both directions (Vol 6 Part B §2.1).
    pub phy: Phy,
    /// Largest LL data payload in both directions, 27..=251 (Vol 6 Part B §4.5.10): 27
    /// without data length extension, 251 with it.
    pub max_ll_payload: u16,
    /// Most packets the central sends in one connection event (empty packets and
    /// retransmissions count); `None` fills the interval. Some phones cap it (iOS: 4).
    pub max_packets_per_event: Option<u16>,
    /// ATT PDUs the peripheral host holds, the one being processed included, ≥ 1.
    pub rx_queue_depth: u16,
    /// What happens to a PDU arriving at a full receive queue.
    pub full_queue: QueuePolicy,
    /// ATT PDUs the central's stack buffers before [`Link::central_submit`] refuses more,
    /// ≥ 1; the PDU being sent counts until the link layer acknowledged it.
    ///
    /// [`Link::central_submit`]: crate::Link::central_submit
    pub central_tx_buffer: u16,
    /// Notifications the peripheral's stack buffers before
    /// [`Link::peripheral_submit`](crate::Link::peripheral_submit) refuses more, ≥ 1.
    pub peripheral_tx_buffer: u16,
    /// Connection supervision timeout: the link is lost when this long passes between two
    /// connection events the peripheral attends (Core Spec 5.x Vol 6 Part B §4.5.2). From
    /// 100 ms to 32 s and longer than two connection intervals (Vol 4 Part E §7.8.12 with
    /// a peripheral latency of 0). Each profile cites where its value comes from.
    pub supervision_timeout: Duration,
    /// Guard before the next anchor point, in µs: a packet pair and its trailing `T_IFS`
    /// start only if they end by `next anchor - event_end_margin_us`. The profiles use
    /// [`DEFAULT_EVENT_END_MARGIN_US`] (150 µs, an assumption documented there). At most the
    /// connection interval minus the longest packet pair.
    pub event_end_margin_us: u32,
}

impl LinkParams {
    /// Returns the original ESP32 as central or peer: LE 1M only (the chip has no 2M PHY),
    /// 7.5 ms, MTU 247, data length extension (251).
    ///
    /// Source: the "ESP32 classic" profile of issue #6 (benchmarks). The device side (receive
    /// queue, policy, buffers) is the same in every profile.
    ///
    /// Supervision timeout 6 s: ESP-IDF's default host, Bluedroid, connects with
    /// `BTM_BLE_CONN_TIMEOUT_DEF` = 600 × 10 ms
    /// (`components/bt/host/bluedroid/stack/include/stack/btm_ble_api.h`). ESP-IDF's NimBLE
    /// host defaults to `BLE_GAP_INITIAL_SUPERVISION_TIMEOUT` = 0x0100 × 10 ms = 2.56 s
    /// instead (`ble_gap.h`); set the field to that for a NimBLE central.
    pub const fn esp32_classic() -> Self {
        LinkParams {
            att_mtu: 247,
            conn_interval_units: 6,
            phy: Phy::Le1M,
            max_ll_payload: MAX_LL_PAYLOAD,
            max_packets_per_event: None,
            supervision_timeout: Duration::from_secs(6),
            ..Self::device_defaults()
        }
    }

    /// Returns an Android phone: LE 2M, 11.25 ms (`CONNECTION_PRIORITY_HIGH`), MTU 517 (what
    /// Android requests), data length extension.
    ///
    /// Source: the "Android" profile of issue #6.
    ///
    /// Supervision timeout 5 s: AOSP's Bluetooth stack connects with
    /// `BTM_BLE_CONN_TIMEOUT_DEF` = 500 × 10 ms (`system/stack/include/btm_ble_api_types.h`),
    /// and `requestConnectionPriority` sends its connection parameter update with
    /// `int timeout = 500; // 5s` (`android/app/src/com/android/bluetooth/gatt/GattService.java`).
    pub const fn android() -> Self {
        LinkParams {
            att_mtu: 517,
            conn_interval_units: 9,
            phy: Phy::Le2M,
            max_ll_payload: MAX_LL_PAYLOAD,
            max_packets_per_event: None,
            supervision_timeout: Duration::from_secs(5),
            ..Self::device_defaults()
        }
    }

    /// Returns an iPhone: LE 2M, 15 ms (the shortest interval Apple's accessory guidelines
    /// allow), 4 packets per connection event, MTU 185, data length extension.
    ///
    /// Source: the "iOS" profile of issue #6.
    ///
    /// Supervision timeout 720 ms: the default iOS connects with and keeps when an accessory's
    /// request falls outside Apple's Accessory Design Guidelines (project notes,
    /// `esp-rs-and-ble-notes.md`: "iOS keeps its defaults (about 30 ms, supervision timeout
    /// about 720 ms)"). The guidelines let an accessory ask for 2 s to 6 s; the model keeps
    /// the default, the value a device that asks for nothing gets. Apple does not publish the
    /// default itself: 720 ms is the commonly observed value, an **assumption** here.
    pub const fn ios() -> Self {
        LinkParams {
            att_mtu: 185,
            conn_interval_units: 12,
            phy: Phy::Le2M,
            max_ll_payload: MAX_LL_PAYLOAD,
            max_packets_per_event: Some(4),
            supervision_timeout: Duration::from_millis(720),
            ..Self::device_defaults()
        }
    }

    /// Returns a desktop (BlueZ, Windows, macOS with a recent controller): LE 2M, 7.5 ms,
    /// MTU 247, data length extension.
    ///
    /// Source: the "desktop" profile of issue #6.
    ///
    /// Supervision timeout 420 ms: BlueZ creates LE connections with the Linux kernel's
    /// default, `hdev->le_supv_timeout = 0x002a` (42 × 10 ms) in `hci_alloc_dev_priv`
    /// (`net/bluetooth/hci_core.c`), the shortest of the profiles. Windows and macOS do not
    /// publish theirs.
    pub const fn desktop() -> Self {
        LinkParams {
            att_mtu: 247,
            conn_interval_units: 6,
            phy: Phy::Le2M,
            max_ll_payload: MAX_LL_PAYLOAD,
            max_packets_per_event: None,
            supervision_timeout: Duration::from_millis(420),
            ..Self::device_defaults()
        }
    }

    /// The device side every profile shares.
    const fn device_defaults() -> Self {
        LinkParams {
            att_mtu: MIN_ATT_MTU,
            conn_interval_units: MIN_CONN_INTERVAL_UNITS,
            phy: Phy::Le1M,
            max_ll_payload: MIN_LL_PAYLOAD,
            max_packets_per_event: None,
            rx_queue_depth: DEFAULT_RX_QUEUE_DEPTH,
            full_queue: QueuePolicy::Drop,
            central_tx_buffer: DEFAULT_CENTRAL_TX_BUFFER,
            peripheral_tx_buffer: DEFAULT_PERIPHERAL_TX_BUFFER,
            supervision_timeout: Duration::from_secs(6),
            event_end_margin_us: DEFAULT_EVENT_END_MARGIN_US,
        }
    }

    /// Returns the connection interval in µs.
    pub const fn conn_interval_us(&self) -> u32 {
        self.conn_interval_units as u32 * CONN_INTERVAL_UNIT_US
    }

    /// Returns the connection interval.
    pub const fn conn_interval(&self) -> Duration {
        Duration::from_micros(self.conn_interval_us() as u64)
    }

    /// Returns the supervision timeout in whole µs (rounded up).
    pub fn supervision_timeout_us(&self) -> u64 {
        crate::time::ceil_us(self.supervision_timeout)
    }

    /// Returns the timing the value length depends on, in the terms of
    /// `ota_core::protocol::air` (the arithmetic the device and this model share).
    pub const fn event_timing(&self) -> ota_core::protocol::air::EventTiming {
        ota_core::protocol::air::EventTiming {
            phy: self.phy,
            data_length: self.max_ll_payload,
            interval_us: self.conn_interval_us(),
            end_margin_us: self.event_end_margin_us,
            max_pairs: match self.max_packets_per_event {
                Some(n) => Some(n as u32),
                None => None,
            },
            reply_payload: 0,
        }
    }

    /// Returns the latest time after an anchor point, in µs, at which a packet pair and its
    /// trailing `T_IFS` may end: the connection interval minus
    /// [`event_end_margin_us`](LinkParams::event_end_margin_us).
    pub const fn event_budget_us(&self) -> u32 {
        self.conn_interval_us()
            .saturating_sub(self.event_end_margin_us)
    }

    /// Returns the largest value of a write or notification: `att_mtu - 3`, at most 512.
    pub const fn max_value_len(&self) -> usize {
        let v = self.att_mtu as usize - ATT_WRITE_HEADER_LEN as usize;
        if v < MAX_ATTRIBUTE_LEN {
            v
        } else {
            MAX_ATTRIBUTE_LEN
        }
    }

    /// Checks every field against its range.
    ///
    /// # Errors
    ///
    /// Returns the first field out of range.
    pub fn validate(&self) -> Result<(), ParamError> {
        if !(MIN_ATT_MTU..=MAX_ATT_MTU).contains(&self.att_mtu) {
            return Err(ParamError::AttMtu(self.att_mtu));
        }
        if !(MIN_CONN_INTERVAL_UNITS..=MAX_CONN_INTERVAL_UNITS).contains(&self.conn_interval_units)
        {
            return Err(ParamError::ConnInterval(self.conn_interval_units));
        }
        if !(MIN_LL_PAYLOAD..=MAX_LL_PAYLOAD).contains(&self.max_ll_payload) {
            return Err(ParamError::LlPayload(self.max_ll_payload));
        }
        if self.max_packets_per_event == Some(0) {
            return Err(ParamError::PacketsPerEvent);
        }
        if self.rx_queue_depth == 0 {
            return Err(ParamError::RxQueueDepth);
        }
        if self.central_tx_buffer == 0 || self.peripheral_tx_buffer == 0 {
            return Err(ParamError::TxBuffer);
        }
        let timeout = self.supervision_timeout;
        if !(MIN_SUPERVISION_TIMEOUT..=MAX_SUPERVISION_TIMEOUT).contains(&timeout)
            || timeout <= 2 * self.conn_interval()
        {
            return Err(ParamError::SupervisionTimeout(timeout));
        }
        // The longest pair must fit an event, or nothing would ever be sent.
        let longest = pair_us(self.phy, self.max_ll_payload, self.max_ll_payload);
        if self.event_end_margin_us > self.conn_interval_us().saturating_sub(longest) {
            return Err(ParamError::EventEndMargin(self.event_end_margin_us));
        }
        Ok(())
    }
}

/// The four client profiles of the benchmarks, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// [`LinkParams::esp32_classic`].
    Esp32Classic,
    /// [`LinkParams::android`].
    Android,
    /// [`LinkParams::ios`].
    Ios,
    /// [`LinkParams::desktop`].
    Desktop,
}

impl Profile {
    /// Every profile, in the order the benchmark reports them.
    pub const ALL: [Profile; 4] = [
        Profile::Esp32Classic,
        Profile::Android,
        Profile::Ios,
        Profile::Desktop,
    ];

    /// Returns the profile's parameters.
    pub const fn params(self) -> LinkParams {
        match self {
            Profile::Esp32Classic => LinkParams::esp32_classic(),
            Profile::Android => LinkParams::android(),
            Profile::Ios => LinkParams::ios(),
            Profile::Desktop => LinkParams::desktop(),
        }
    }

    /// Returns the profile's short name: `esp32-classic`, `android`, `ios` or `desktop`.
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Esp32Classic => "esp32-classic",
            Profile::Android => "android",
            Profile::Ios => "ios",
            Profile::Desktop => "desktop",
        }
    }

    /// Returns the profile named `name` (as [`Profile::name`] spells it).
    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_and_as_specified() {
        for profile in Profile::ALL {
            profile.params().validate().unwrap();
            assert_eq!(Profile::from_name(profile.name()), Some(profile));
        }
        let ms = |p: LinkParams| p.conn_interval_us();
        assert_eq!(ms(LinkParams::esp32_classic()), 7500);
        assert_eq!(ms(LinkParams::android()), 11_250);
        assert_eq!(ms(LinkParams::ios()), 15_000);
        assert_eq!(ms(LinkParams::desktop()), 7500);
        assert_eq!(LinkParams::ios().max_packets_per_event, Some(4));
        assert_eq!(LinkParams::esp32_classic().phy, Phy::Le1M);
        assert_eq!(LinkParams::esp32_classic().max_value_len(), 244);
        assert_eq!(LinkParams::ios().max_value_len(), 182);
        assert_eq!(LinkParams::android().max_value_len(), 512);
        let timeout = |p: LinkParams| p.supervision_timeout.as_millis();
        assert_eq!(timeout(LinkParams::esp32_classic()), 6000);
        assert_eq!(timeout(LinkParams::android()), 5000);
        assert_eq!(timeout(LinkParams::ios()), 720);
        assert_eq!(timeout(LinkParams::desktop()), 420);
        assert_eq!(LinkParams::esp32_classic().event_budget_us(), 7350);
    }

    #[test]
    fn validate_rejects_out_of_range_fields() {
        let ok = LinkParams::desktop();
        let check = |p: LinkParams| p.validate().unwrap_err();
        assert_eq!(
            check(LinkParams { att_mtu: 22, ..ok }),
            ParamError::AttMtu(22)
        );
        assert_eq!(
            check(LinkParams { att_mtu: 518, ..ok }),
            ParamError::AttMtu(518)
        );
        assert_eq!(
            check(LinkParams {
                conn_interval_units: 5,
                ..ok
            }),
            ParamError::ConnInterval(5)
        );
        assert_eq!(
            check(LinkParams {
                conn_interval_units: 3201,
                ..ok
            }),
            ParamError::ConnInterval(3201)
        );
        assert_eq!(
            check(LinkParams {
                max_ll_payload: 26,
                ..ok
            }),
            ParamError::LlPayload(26)
        );
        assert_eq!(
            check(LinkParams {
                max_ll_payload: 252,
                ..ok
            }),
            ParamError::LlPayload(252)
        );
        assert_eq!(
            check(LinkParams {
                max_packets_per_event: Some(0),
                ..ok
            }),
            ParamError::PacketsPerEvent
        );
        assert_eq!(
            check(LinkParams {
                rx_queue_depth: 0,
                ..ok
            }),
            ParamError::RxQueueDepth
        );
        assert_eq!(
            check(LinkParams {
                central_tx_buffer: 0,
                ..ok
            }),
            ParamError::TxBuffer
        );
        assert_eq!(
            check(LinkParams {
                peripheral_tx_buffer: 0,
                ..ok
            }),
            ParamError::TxBuffer
        );
    }

    #[test]
    fn pair_time() {
        assert_eq!(pair_us(Phy::Le1M, 251, 0), 2088 + 150 + 80 + 150);
        assert_eq!(pair_us(Phy::Le2M, 251, 0), 1048 + 150 + 44 + 150);
    }
}
