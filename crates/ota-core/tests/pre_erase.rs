//! The update slot is erased ahead of time while the device is idle, so an update erases one
//! 4 KiB sector at most at a time, and rarely at all, while its link is up.

mod support;

use embedded_storage::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use ota_core::device::{ClientId, PreErase, UpdateEngine};
use ota_core::esp::{Chip, OtaImgState};
use ota_core::protocol::legacy;
use ota_core::time::Instant;
use support::{Device, MemFlash, build_image};

/// A flash that records every erase (from, to).
struct Counting<'a> {
    inner: MemFlash<'a>,
    erases: Vec<(u32, u32)>,
}

impl ErrorType for Counting<'_> {
    type Error = <MemFlash<'static> as ErrorType>::Error;
}

impl ReadNorFlash for Counting<'_> {
    const READ_SIZE: usize = 1;
    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(offset, bytes)
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl NorFlash for Counting<'_> {
    const WRITE_SIZE: usize = 4;
    const ERASE_SIZE: usize = 4096;
    fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.erases.push((from, to));
        self.inner.erase(from, to)
    }
    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.inner.write(offset, bytes)
    }
}

fn counting(dev: &mut Device) -> Counting<'_> {
    Counting {
        inner: MemFlash::new(&mut dev.flash),
        erases: Vec::new(),
    }
}

/// Runs pre-erase steps until done; returns (erased, blank) sector counts.
fn pre_erase_all(engine: &mut UpdateEngine, flash: &mut Counting<'_>) -> (u32, u32) {
    let (mut erased, mut blank) = (0, 0);
    loop {
        match engine.pre_erase_step(flash).unwrap() {
            PreErase::Erased { .. } => erased += 1,
            PreErase::Blank { .. } => blank += 1,
            PreErase::Done => return (erased, blank),
            PreErase::NotNow => panic!("not now"),
        }
    }
}

/// The seed's client flow (write requests, in order); returns DONE's answer.
fn legacy_update(engine: &mut UpdateEngine, flash: &mut Counting<'_>, img: &[u8]) -> u8 {
    let c = ClientId(1);
    engine.handle_mtu(c, 247);
    engine
        .handle_data_write(flash, c, &244u16.to_le_bytes(), Instant(0))
        .unwrap();
    engine.handle_control_write(flash, c, &[legacy::REQUEST], Instant(0));
    let mut buf = [0u8; 600];
    assert_eq!(engine.poll_notification(&mut buf), Some((c, 1)));
    assert_eq!(buf[0], legacy::REQUEST_ACK);
    for chunk in img.chunks(244) {
        engine
            .handle_data_write(flash, c, chunk, Instant(1))
            .unwrap();
    }
    engine.handle_control_write(flash, c, &[legacy::DONE], Instant(2));
    engine.poll_notification(&mut buf).unwrap();
    buf[0]
}

#[test]
fn a_blank_slot_is_recognised_without_a_single_erase() {
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let slot = dev.partition("ota_0");
    let mut flash = counting(&mut dev);
    let (erased, blank) = pre_erase_all(&mut engine, &mut flash);
    assert_eq!((erased, blank), (0, slot.size / 4096));
    assert!(flash.erases.is_empty());
    assert_eq!(engine.pre_erased(), slot.size);
}

#[test]
fn an_update_into_a_pre_erased_slot_erases_nothing_while_connected() {
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 150_000, 3);
    let mut flash = counting(&mut dev);
    pre_erase_all(&mut engine, &mut flash);
    assert_eq!(
        legacy_update(&mut engine, &mut flash, &img),
        legacy::DONE_ACK
    );
    assert!(
        flash.erases.iter().all(|(from, _)| *from < 0x10000),
        "only otadata was erased during the update: {:x?}",
        flash.erases
    );
}

#[test]
fn without_pre_erase_an_update_erases_one_sector_at_a_time_never_a_block() {
    let mut dev = Device::new(Chip::Esp32c3);
    // The slot holds an old image: it must be erased as the update goes.
    let ota_0 = dev.partition("ota_0");
    dev.flash[ota_0.offset as usize..][..0x40000].fill(0x5A);
    let mut engine = dev.engine();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 150_000, 3);
    let mut flash = counting(&mut dev);
    assert_eq!(
        legacy_update(&mut engine, &mut flash, &img),
        legacy::DONE_ACK
    );
    let slot_erases: Vec<_> = flash
        .erases
        .iter()
        .filter(|(from, _)| *from >= ota_0.offset)
        .collect();
    assert_eq!(slot_erases.len() as u32, (img.len() as u32).div_ceil(4096));
    assert!(slot_erases.iter().all(|(from, to)| to - from == 4096));
}

#[test]
fn old_data_is_erased_sector_by_sector_and_the_extent_survives_a_reboot_as_a_blank_check() {
    let mut dev = Device::new(Chip::Esp32c3);
    let ota_0 = dev.partition("ota_0");
    dev.flash[ota_0.offset as usize..][..0x8000].fill(0x00);
    let mut engine = dev.engine();
    {
        let mut flash = counting(&mut dev);
        let (erased, _) = pre_erase_all(&mut engine, &mut flash);
        assert_eq!(erased, 8);
        assert!(flash.erases.iter().all(|(from, to)| to - from == 4096));
    }
    // A reboot forgets the extent; the blank check finds it again with no flash write.
    let mut engine = dev.engine();
    let mut flash = counting(&mut dev);
    assert_eq!(pre_erase_all(&mut engine, &mut flash).0, 0);
    assert!(flash.erases.is_empty());
}

#[test]
fn a_trial_image_keeps_its_way_back() {
    let mut dev = Device::new(Chip::Esp32c3);
    let mut engine = dev.engine();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 30_000, 3);
    {
        let mut flash = counting(&mut dev);
        assert_eq!(
            legacy_update(&mut engine, &mut flash, &img),
            legacy::DONE_ACK
        );
        // A session is activated: nothing to erase until the reboot.
        assert_eq!(engine.pre_erase_step(&mut flash), Ok(PreErase::NotNow));
    }
    // Boot ota_0 on trial: the previous image (factory here, a slot in general) stays.
    let ota_0 = dev.partition("ota_0");
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    slots
        .set_active_state(
            &mut MemFlash::new(&mut dev.flash),
            OtaImgState::PendingVerify,
        )
        .unwrap();
    dev.running = ota_0;
    let mut engine = dev.engine();
    assert!(engine.is_trial());
    let mut flash = counting(&mut dev);
    assert_eq!(engine.pre_erase_step(&mut flash), Ok(PreErase::NotNow));
    // Once confirmed, the next slot (ota_1) is prepared.
    engine.confirm(&mut flash).unwrap();
    assert!(matches!(
        engine.pre_erase_step(&mut flash),
        Ok(PreErase::Blank { .. } | PreErase::Erased { .. })
    ));
}

#[test]
fn the_engine_accounts_for_every_flash_command_it_issues() {
    // What a device model charges comes from the engine's own account.
    let mut dev = Device::new(Chip::Esp32c3);
    let ota_0 = dev.partition("ota_0");
    dev.flash[ota_0.offset as usize..][..0x20000].fill(0x5A);
    let mut engine = dev.engine();
    let _ = engine.take_flash_work();
    let img = build_image(Chip::Esp32c3, "app", "2.0.0", 100_000, 3);
    let mut flash = counting(&mut dev);
    assert_eq!(
        legacy_update(&mut engine, &mut flash, &img),
        legacy::DONE_ACK
    );
    let work = engine.take_flash_work();
    let sectors: u64 = flash
        .erases
        .iter()
        .map(|(from, to)| u64::from((to - from) / 4096))
        .sum();
    assert_eq!(work.sector_erases, sectors);
    // One page-program command per 256 bytes of the image (the last page padded), and one
    // for the otadata entry that selects it.
    assert_eq!(work.page_programs, (img.len() as u64).div_ceil(256) + 1);
    assert!(
        work.bytes_read >= img.len() as u64,
        "the read-back: {work:?}"
    );
    assert_eq!(engine.take_flash_work(), Default::default(), "taken once");
}

#[test]
fn otadata_stops_falling_back_onto_the_slot_before_its_first_erase() {
    // Running ota_1 (seq 2); the other otadata entry (seq 1) still selects ota_0, which holds
    // the previous image. ESP-IDF's esp_ota_begin invalidates that entry before it erases
    // ota_0, so a power cut never leaves the bootloader a half-erased slot to fall back on.
    let mut dev = Device::new(Chip::Esp32c3);
    let (ota_0, ota_1) = (dev.partition("ota_0"), dev.partition("ota_1"));
    let slots = ota_core::esp::OtaSlots::new(dev.table.clone()).unwrap();
    {
        let mut f = MemFlash::new(&mut dev.flash);
        slots
            .set_boot_partition(&mut f, &ota_0, OtaImgState::Valid)
            .unwrap();
        slots
            .set_boot_partition(&mut f, &ota_1, OtaImgState::Valid)
            .unwrap();
    }
    dev.flash[ota_0.offset as usize..][..0x10000].fill(0x5A);
    dev.running = ota_1;
    let otadata = dev.table.otadata().unwrap().offset;
    let mut engine = dev.engine();
    let img = build_image(Chip::Esp32c3, "app", "3.0.0", 30_000, 4);
    let mut flash = counting(&mut dev);
    assert_eq!(
        legacy_update(&mut engine, &mut flash, &img),
        legacy::DONE_ACK
    );
    let first_slot_erase = flash
        .erases
        .iter()
        .position(|(from, _)| *from >= ota_0.offset)
        .expect("ota_0 was erased");
    assert!(
        flash.erases[..first_slot_erase]
            .iter()
            .any(|(from, _)| (otadata..otadata + 0x2000).contains(from)),
        "the otadata entry selecting ota_0 was invalidated first: {:x?}",
        flash.erases
    );
}
