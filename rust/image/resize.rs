//! Lanczos-3 resize by stretching (no crop), as Pillow's `Image.resize(...,
//! LANCZOS)` does: a 3-lobe kernel whose support widens with the downscale
//! factor. `fast_image_resize` implements the same convolution with SIMD.

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::error::ImageFailure;
use crate::image::decode::RgbImage;

thread_local! {
    // One resizer per worker thread keeps its scratch buffers between images.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Resize `src` to `height x width` into `out` (exactly `height * width * 3` bytes).
pub fn resize_into(src: &RgbImage, height: usize, width: usize, out: &mut [u8]) -> Result<(), ImageFailure> {
    assert_eq!(out.len(), height * width * 3, "output buffer does not match the target size");
    if src.height == height && src.width == width {
        out.copy_from_slice(&src.data);
        return Ok(());
    }
    let fail = |e: &dyn std::fmt::Display| ImageFailure::Corrupt(format!("resize failed: {e}"));
    let src_view =
        ImageRef::new(src.width as u32, src.height as u32, &src.data, PixelType::U8x3).map_err(|e| fail(&e))?;
    let mut dst = Image::from_slice_u8(width as u32, height as u32, out, PixelType::U8x3).map_err(|e| fail(&e))?;
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    RESIZER.with(|r| r.borrow_mut().resize(&src_view, &mut dst, &options)).map_err(|e| fail(&e))
}

/// Resize to a new image.
pub fn resize(src: &RgbImage, height: usize, width: usize) -> Result<RgbImage, ImageFailure> {
    if src.height == height && src.width == width {
        return Ok(src.clone());
    }
    let mut data = vec![0u8; height * width * 3];
    resize_into(src, height, width, &mut data)?;
    Ok(RgbImage { width, height, data })
}
