//! The one table of refusal reasons, shared by the fast protocol's ERROR response, the ATT
//! error of a refused write request (`0x80 + reason`) and the client's error messages.

macro_rules! reasons {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal, $hint:literal;)*) => {
        /// Why the device refused a command or a write.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "defmt", derive(defmt::Format))]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum Reason {
            $($(#[doc = $doc])* $name = $code,)*
        }

        impl Reason {
            /// Every reason, in code order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// Returns the reason for a wire code.
            pub fn from_code(code: u8) -> Option<Reason> {
                match code {
                    $($code => Some(Reason::$name),)*
                    _ => None,
                }
            }

            /// Returns what a user should do about it.
            pub fn hint(self) -> &'static str {
                match self {
                    $(Reason::$name => $hint,)*
                }
            }
        }
    };
}

reasons! {
    /// The command's opcode is unknown.
    UnknownCommand = 0x01, "unknown command: update the client or the firmware so both speak the same protocol version";
    /// The command or write has the wrong length for its opcode.
    BadLength = 0x02, "malformed command: the client sent a wrong length";
    /// Data or END arrived with no update session.
    NoSession = 0x03, "no update in progress: start one first (BEGIN or REQUEST)";
    /// Another client is driving an update.
    Busy = 0x04, "another client is updating this device: wait for it to finish or disconnect";
    /// The image does not fit the update slot.
    ImageTooLarge = 0x05, "image larger than the OTA slot: shrink the app or enlarge ota_0/ota_1 in partitions.csv";
    /// The image is built for another chip.
    WrongChip = 0x06, "image built for another chip: rebuild for this device's chip";
    /// The image does not start with the ESP app image magic 0xE9.
    BadImageMagic = 0x07, "not an ESP app image: send the .bin from `espflash save-image`, not the ELF";
    /// The image's segment table is invalid: count, length, or where a segment goes (MMU page
    /// alignment, RAM range, the bootloader's RAM).
    BadImageFormat = 0x08, "bad image layout: segment count, length or load address the bootloader refuses (see `ble-ota image inspect`)";
    /// The image's XOR checksum does not match.
    BadImageChecksum = 0x09, "corrupt image: checksum mismatch";
    /// The image's appended SHA-256 does not match.
    BadImageHash = 0x0A, "corrupt image: appended SHA-256 mismatch";
    /// The bytes received do not hash to the SHA-256 announced in BEGIN.
    SessionHashMismatch = 0x0B, "received bytes differ from the announced SHA-256: retry the update";
    /// A chunk's offset lies beyond the image, or a legacy write came out of order.
    BadOffset = 0x0C, "write at an offset outside the image";
    /// A flash operation failed.
    FlashError = 0x0D, "flash write failed on the device: retry; if it persists the flash may be worn";
    /// END arrived before every byte did.
    Incomplete = 0x0E, "not every byte arrived: resume the transfer before END";
    /// BEGIN asks for a feature this device lacks (compression, signed manifest).
    Unsupported = 0x0F, "feature not supported by this firmware: update without it";
    /// CONFIRM with no image on trial.
    NothingToConfirm = 0x10, "the running image is not on trial: nothing to confirm";
    /// The partition table has no usable OTA slot or otadata.
    NoOtaSlot = 0x11, "the partition table has no ota_0/ota_1 or otadata: flash a table with OTA slots";
    /// The image has no `esp_app_desc_t`.
    NoAppDescriptor = 0x12, "image has no app descriptor: build it with esp_app_desc!()";
    /// The running image is on trial: confirm or roll back before updating again.
    TrialPending = 0x13, "the running image is on trial: confirm it (ble-ota confirm) or reboot to roll back first";
    /// A data write is larger than the announced packet or chunk size.
    ChunkTooLarge = 0x14, "write larger than the announced packet size";
    /// The image is shorter than its header says (or than announced).
    Truncated = 0x15, "image truncated: the file is incomplete";
    /// No longer sent: bytes after the image's end are written with it and ignored, as ESP-IDF
    /// and esptool ignore them. The code stays reserved (older firmware sends it).
    TrailingData = 0x16, "bytes after the image's end (older firmware only): update the firmware, or strip them from the file";
    /// An update is verified and selected; the device must reboot before another one.
    RebootPending = 0x17, "an update is already selected for the next boot: reboot the device (ble-ota reboot) first";
    /// The device's chip revision lies outside the image's `min_chip_rev_full` ..=
    /// `max_chip_rev_full`.
    ChipRevision = 0x18, "image built for other chip revisions than this device's: rebuild with a minimum (and maximum) chip revision that includes it (`ble-ota image inspect --chip-revision X.Y` shows the range)";
    /// otadata's sequence number cannot grow any further (0xFFFFFFFE reached: a forged or
    /// corrupt entry, as no device makes four billion updates); nothing was selected.
    OtadataExhausted = 0x19, "otadata's sequence number is used up (a corrupt or forged entry): erase otadata over USB (`espflash erase-region 0xd000 0x2000` for the default table), then update again";
    /// The compressed stream does not inflate to the announced image: corrupt, cut short,
    /// longer than the image, or with bytes after its end.
    BadStream = 0x1A, "the compressed image does not inflate to the announced one: update again, or without compression (--no-compress)";
    /// The device trusts a signing key and the update came without a signed manifest (or the
    /// seed's protocol, which has no room for one, on a device built to refuse it).
    SignatureRequired = 0x1B, "this device only takes signed images: sign it with the device's key (ble-ota flash IMAGE --key NAME.key, or ble-ota sign and keep IMAGE.sig beside the image)";
    /// The manifest names a key the device does not trust (`detail`: its fingerprint's first
    /// 4 bytes).
    UnknownKey = 0x1C, "signed with a key this device does not trust: sign with the key its firmware was built with (ble-ota info shows its fingerprint)";
    /// The manifest's signature does not verify, or the manifest is malformed.
    BadSignature = 0x1D, "the signature does not verify: the image or its manifest was altered or forged; sign the image again";
    /// The manifest names another image (size, SHA-256, chip) than BEGIN announces, or the
    /// image's app descriptor disagrees with it (version, secure_version).
    ManifestMismatch = 0x1E, "the signed manifest belongs to another image: sign this image (ble-ota sign IMAGE --key NAME.key)";
    /// The manifest's `secure_version` is lower than the running app's (`detail`: the running
    /// app's).
    Downgrade = 0x1F, "the image's secure_version is lower than the running app's: downgrades are refused; build with a secure_version at least the running one's";
}

/// First ATT application error code (Core Spec Vol 3 Part F 3.4.1.1); a refused write request
/// carries `ATT_APP_ERROR_BASE + reason`.
pub const ATT_APP_ERROR_BASE: u8 = 0x80;

impl Reason {
    /// Returns the wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Returns the ATT error code of a refused write request.
    pub fn att_error(self) -> u8 {
        ATT_APP_ERROR_BASE + self.code()
    }

    /// Returns the reason carried by an ATT application error code.
    pub fn from_att_error(code: u8) -> Option<Reason> {
        code.checked_sub(ATT_APP_ERROR_BASE)
            .and_then(Reason::from_code)
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:?} (0x{:02x}): {}", self, self.code(), self.hint())
    }
}

impl From<crate::esp::ImageError> for Reason {
    fn from(e: crate::esp::ImageError) -> Self {
        use crate::esp::ImageError as E;
        match e {
            E::BadMagic { .. } => Reason::BadImageMagic,
            E::BadSegmentCount { .. }
            | E::BadSegmentLength { .. }
            | E::MisalignedSegment { .. }
            | E::BadLoadAddress { .. }
            | E::OverlapsBootloader { .. } => Reason::BadImageFormat,
            E::ChipRevisionTooLow { .. } | E::ChipRevisionTooHigh { .. } => Reason::ChipRevision,
            E::WrongChip { .. } => Reason::WrongChip,
            E::TooLarge { .. } => Reason::ImageTooLarge,
            E::Truncated { .. } => Reason::Truncated,
            E::ChecksumMismatch { .. } => Reason::BadImageChecksum,
            E::HashMismatch => Reason::BadImageHash,
            E::NoAppDescriptor => Reason::NoAppDescriptor,
            E::Flash(_) => Reason::FlashError,
        }
    }
}
