//! The SHA-256 the engine hashes images with: `sha2`'s portable one by default. A firmware
//! plugs in its chip's accelerator (esp-hal's `Sha256Context`) through [`Sha256Hasher`].
//!
//! The engine runs two hashes at once (the arriving image, and the slot read back) and takes a
//! snapshot of the first mid-stream (where the image's appended hash starts), so a hasher must
//! be `Clone` and `Default`, as `digest` 0.10 hashers are.

/// An incremental SHA-256.
pub trait Sha256Hasher: Clone + Default {
    /// Hashes `data` after what came before.
    fn update(&mut self, data: &[u8]);
    /// Returns the digest of everything hashed.
    fn finalize(self) -> [u8; 32];
}

impl<D> Sha256Hasher for D
where
    D: digest::Update
        + digest::FixedOutput
        + digest::OutputSizeUser<OutputSize = digest::consts::U32>
        + Clone
        + Default,
{
    fn update(&mut self, data: &[u8]) {
        digest::Update::update(self, data);
    }

    fn finalize(self) -> [u8; 32] {
        digest::FixedOutput::finalize_fixed(self).into()
    }
}
