//! The streaming app-image validator: never panics, and the split point never changes the verdict.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ota_core::esp::ImageValidator;

fuzz_target!(|input: (u16, &[u8])| {
    let (split, data) = input;
    let whole = {
        let mut v = ImageValidator::new(None, 1 << 20);
        v.feed(data).and_then(|()| v.finish().map(|_| ()))
    };
    let split = (split as usize).min(data.len());
    let parts = {
        let mut v = ImageValidator::new(None, 1 << 20);
        v.feed(&data[..split]).and_then(|()| v.feed(&data[split..])).and_then(|()| v.finish().map(|_| ()))
    };
    assert_eq!(whole.is_ok(), parts.is_ok());
});
