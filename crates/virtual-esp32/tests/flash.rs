//! The virtual NOR flash alone: semantics, counters, persistence, power cuts.

use embedded_storage::nor_flash::{
    MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use virtual_esp32::{FaultPlan, Flash, FlashError, Tear};

const SIZE: u32 = 256 * 1024;

fn read(f: &mut Flash, offset: u32, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    f.read(offset, &mut buf).unwrap();
    buf
}

fn assert_multiwrite<F: MultiwriteNorFlash>(_: &F) {}

#[test]
fn geometry_like_esp_storage() {
    let f = Flash::erased(SIZE);
    assert_eq!(<Flash as ReadNorFlash>::READ_SIZE, 1);
    assert_eq!(<Flash as NorFlash>::WRITE_SIZE, 4);
    assert_eq!(<Flash as NorFlash>::ERASE_SIZE, 4096);
    assert_eq!(f.capacity(), SIZE as usize);
    assert_multiwrite(&f);
}

#[test]
fn program_ands_bits_and_erase_restores_ff() {
    let mut f = Flash::erased(SIZE);
    f.write(0x1000, &[0xF0, 0x0F, 0xAA, 0xFF]).unwrap();
    assert_eq!(read(&mut f, 0x1000, 4), [0xF0, 0x0F, 0xAA, 0xFF]);
    // Programming over unerased bytes: new = old & data, as real NOR flash.
    f.write(0x1000, &[0x3C, 0xFF, 0x55, 0x00]).unwrap();
    assert_eq!(read(&mut f, 0x1000, 4), [0x30, 0x0F, 0x00, 0x00]);
    // Programming 0xFF changes nothing.
    f.write(0x1000, &[0xFF; 4]).unwrap();
    assert_eq!(read(&mut f, 0x1000, 4), [0x30, 0x0F, 0x00, 0x00]);
    // Erase sets the whole sector, and only it, to 0xFF.
    f.write(0x2000, &[0; 4]).unwrap();
    f.erase(0x1000, 0x2000).unwrap();
    assert!(read(&mut f, 0x1000, 0x1000).iter().all(|b| *b == 0xFF));
    assert_eq!(read(&mut f, 0x2000, 4), [0; 4]);
}

#[test]
fn reads_any_alignment_writes_and_erases_aligned() {
    let mut f = Flash::erased(SIZE);
    f.write(0, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(read(&mut f, 3, 3), [4, 5, 6]);
    for (off, len) in [(1u32, 4usize), (2, 4), (0, 3), (4, 6)] {
        let e = f.write(off, &vec![0; len]).unwrap_err();
        assert_eq!(e.kind(), NorFlashErrorKind::NotAligned, "{off} {len}");
    }
    assert_eq!(
        f.erase(0x800, 0x1000).unwrap_err().kind(),
        NorFlashErrorKind::NotAligned
    );
    assert_eq!(
        f.erase(0, 0x1800).unwrap_err().kind(),
        NorFlashErrorKind::NotAligned
    );
    assert_eq!(
        f.erase(0x2000, 0x1000).unwrap_err().kind(),
        NorFlashErrorKind::NotAligned
    );
    assert_eq!(
        f.write(SIZE - 4, &[0; 8]).unwrap_err().kind(),
        NorFlashErrorKind::OutOfBounds
    );
    assert_eq!(
        f.erase(SIZE, SIZE + 0x1000).unwrap_err().kind(),
        NorFlashErrorKind::OutOfBounds
    );
    let mut buf = [0; 2];
    assert_eq!(
        f.read(SIZE - 1, &mut buf).unwrap_err().kind(),
        NorFlashErrorKind::OutOfBounds
    );
    // Refused operations changed nothing and were not counted as mutating.
    assert_eq!(f.stats().mutating_ops, 1);
}

#[test]
fn counters() {
    let mut f = Flash::erased(SIZE);
    f.write(0xF0, &[0; 0x20]).unwrap(); // crosses a 256-byte page: 2 page programs
    f.write(0x100, &[]).unwrap(); // empty: not an operation
    let mut b = [0; 5];
    f.read(1, &mut b).unwrap();
    // 0x1000..0x32000: 15 sector erases up to 0x10000, 64 KiB block erases at 0x10000 and
    // 0x20000, then 2 sector erases.
    f.erase(0x1000, 0x32000).unwrap();
    let s = f.stats();
    assert_eq!(s.writes, 1);
    assert_eq!(s.bytes_programmed, 0x20);
    assert_eq!(s.page_programs, 2);
    assert_eq!(s.reads, 1);
    assert_eq!(s.bytes_read, 5);
    assert_eq!(s.erases, 1);
    assert_eq!(s.sectors_erased, 0x31);
    assert_eq!(s.block_erase_cmds, 2);
    assert_eq!(s.sector_erase_cmds, 15 + 2);
    assert_eq!(s.mutating_ops, 2);
    f.reset_stats();
    assert_eq!(f.stats(), Default::default());
}

#[test]
fn writes_through_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flash.bin");
    let mut f = Flash::create(&path, vec![0xFF; SIZE as usize]).unwrap();
    f.write(0x3000, b"ESP!").unwrap();
    f.erase(0x10000, 0x11000).unwrap();
    // Another reader sees every completed operation without any flush.
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), SIZE as usize);
    assert_eq!(&on_disk[0x3000..0x3004], b"ESP!");
    f.write(0x3000, &[0x0F; 4]).unwrap();
    drop(f);
    let mut g = Flash::open(&path).unwrap();
    assert_eq!(g.size(), SIZE);
    assert_eq!(
        read(&mut g, 0x3000, 4),
        [b'E' & 0xF, b'S' & 0xF, b'P' & 0xF, b'!' & 0xF]
    );
    assert_eq!(g.path(), Some(path.as_path()));
}

#[test]
fn write_raw_sets_bytes_exactly_without_counting() {
    let mut f = Flash::erased(SIZE);
    f.write(0, &[0; 4]).unwrap();
    f.write_raw(1, &[0xAB, 0xFF]).unwrap();
    assert_eq!(read(&mut f, 0, 4), [0, 0xAB, 0xFF, 0]);
    assert_eq!(f.stats().mutating_ops, 1);
}

#[test]
fn power_lost_until_power_on() {
    let mut f = Flash::erased(SIZE);
    f.arm(FaultPlan::cut_at(2));
    f.write(0, &[0; 4]).unwrap();
    assert_eq!(f.erase(0, 0x1000), Err(FlashError::PowerLost));
    assert!(!f.is_powered());
    assert_eq!(f.armed(), None, "a plan fires once");
    let mut b = [0; 4];
    assert_eq!(f.read(0, &mut b), Err(FlashError::PowerLost));
    assert_eq!(f.write(8, &[0; 4]), Err(FlashError::PowerLost));
    assert_eq!(f.erase(0x1000, 0x2000), Err(FlashError::PowerLost));
    assert_eq!(FlashError::PowerLost.kind(), NorFlashErrorKind::Other);
    f.power_on();
    f.read(0, &mut b).unwrap();
    f.write(8, &[0; 4]).unwrap();
    // The failed operations while off did not count.
    assert_eq!(f.stats().mutating_ops, 3);
    // cut_power works between operations.
    f.cut_power();
    assert_eq!(f.read(0, &mut b), Err(FlashError::PowerLost));
}

#[test]
fn torn_write_programs_a_prefix() {
    let data: Vec<u8> = (0..32).collect();
    for (tear, programmed) in [(Tear::Half, 16), (Tear::Nothing, 0), (Tear::Complete, 32)] {
        let mut f = Flash::erased(SIZE);
        f.arm(FaultPlan::cut_at(1).with_tear(tear));
        assert_eq!(f.write(0x100, &data), Err(FlashError::PowerLost));
        f.power_on();
        let got = read(&mut f, 0x100, 32);
        assert_eq!(&got[..programmed], &data[..programmed], "{tear:?}");
        assert!(got[programmed..].iter().all(|b| *b == 0xFF), "{tear:?}");
    }
}

#[test]
fn torn_erase_erases_part() {
    // One sector: its first half is erased, its second half keeps the old data.
    let mut f = Flash::in_memory(vec![0u8; SIZE as usize]);
    f.arm(FaultPlan::cut_at(1));
    assert_eq!(f.erase(0x2000, 0x3000), Err(FlashError::PowerLost));
    f.power_on();
    let s = read(&mut f, 0x2000, 0x1000);
    assert!(s[..0x800].iter().all(|b| *b == 0xFF));
    assert!(s[0x800..].iter().all(|b| *b == 0));
    assert_eq!(read(&mut f, 0x1FFF, 1), [0]);

    // Five sectors: two erased, the third half erased, the last two untouched.
    let mut f = Flash::in_memory(vec![0u8; SIZE as usize]);
    f.arm(FaultPlan::cut_at(1));
    assert_eq!(f.erase(0x10000, 0x15000), Err(FlashError::PowerLost));
    f.power_on();
    let s = read(&mut f, 0x10000, 0x5000);
    assert!(s[..0x2800].iter().all(|b| *b == 0xFF));
    assert!(s[0x2800..].iter().all(|b| *b == 0));

    for (tear, erased) in [(Tear::Nothing, 0), (Tear::Complete, 0x1000)] {
        let mut f = Flash::in_memory(vec![0u8; SIZE as usize]);
        f.arm(FaultPlan::cut_at(1).with_tear(tear));
        assert_eq!(f.erase(0, 0x1000), Err(FlashError::PowerLost));
        f.power_on();
        let s = read(&mut f, 0, 0x1000);
        assert!(s[..erased].iter().all(|b| *b == 0xFF));
        assert!(s[erased..].iter().all(|b| *b == 0));
    }
}

#[test]
fn torn_state_reaches_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flash.bin");
    let mut f = Flash::create(&path, vec![0u8; SIZE as usize]).unwrap();
    f.arm(FaultPlan::cut_at(1));
    assert_eq!(f.erase(0x1000, 0x2000), Err(FlashError::PowerLost));
    drop(f);
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[0x1000..0x1800].iter().all(|b| *b == 0xFF));
    assert!(on_disk[0x1800..0x2000].iter().all(|b| *b == 0));
}

/// A stand-in for an update: erase two sectors, write them in 4-byte-aligned chunks, then
/// write a 32-byte "commit record" into a third sector.
fn update(f: &mut Flash) -> Result<(), FlashError> {
    f.erase(0x4000, 0x6000)?;
    for chunk in 0..16u32 {
        f.write(0x4000 + chunk * 0x200, &[chunk as u8; 0x200])?;
    }
    f.erase(0x6000, 0x7000)?;
    f.write(0x6000, &[0x5A; 32])
}

#[test]
fn cut_at_every_operation_of_an_update() {
    let mut f = Flash::erased(SIZE);
    let before = f.mutating_ops();
    update(&mut f).unwrap();
    let n = f.mutating_ops() - before;
    assert_eq!(n, 1 + 16 + 1 + 1);
    let complete = f.bytes().to_vec();

    for k in 1..=n {
        let mut f = Flash::erased(SIZE);
        f.arm(FaultPlan::cut_at(k));
        assert_eq!(update(&mut f), Err(FlashError::PowerLost), "cut at {k}");
        assert_eq!(f.mutating_ops(), k, "op {k} was the last one attempted");
        assert!(!f.is_powered());
        f.power_on();
        // The commit record is never complete: it is unwritten, or torn (cut at the last op).
        let committed = f.bytes()[0x6000..0x6020] == complete[0x6000..0x6020];
        assert!(!committed, "cut at {k}");
        // Redoing the update after the cut always converges.
        update(&mut f).unwrap();
        assert_eq!(f.bytes(), &complete[..], "cut at {k}");
    }
}
