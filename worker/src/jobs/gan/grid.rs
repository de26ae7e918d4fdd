//! Sample grids: generated images side by side in one greyscale PNG, as the tutorial's
//! `generate_and_save_images` draws them after every epoch.

/// How a grid is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridLayout {
    /// Images per row; the number of rows follows from the image count.
    pub cols: usize,
    /// Each pixel becomes a `scale x scale` block (28-pixel digits are small on screen).
    pub scale: usize,
    /// Pixels (before scaling) of white between and around the images.
    pub gap: usize,
}

impl Default for GridLayout {
    fn default() -> Self {
        GridLayout { cols: 4, scale: 3, gap: 2 }
    }
}

/// Why a grid could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("{values} pixel values do not make {count} images of {height}x{width}")]
    Shape { values: usize, count: usize, height: usize, width: usize },
    #[error("a grid needs at least one image and one column")]
    Empty,
    #[error("encoding the PNG: {0}")]
    Encode(#[from] png::EncodingError),
}

/// `count` single-channel images of `height x width`, pixel values in [-1, 1] (tanh outputs; values
/// outside are clipped), drawn as an 8-bit greyscale PNG with -1 black and 1 white, like the
/// tutorial's `imshow(img * 127.5 + 127.5, cmap='gray')`.
pub fn png_grid(
    pixels: &[f32],
    count: usize,
    height: usize,
    width: usize,
    layout: GridLayout,
) -> Result<Vec<u8>, GridError> {
    if count == 0 || layout.cols == 0 || layout.scale == 0 {
        return Err(GridError::Empty);
    }
    if pixels.len() != count * height * width {
        return Err(GridError::Shape { values: pixels.len(), count, height, width });
    }
    let (cols, rows) = (layout.cols.min(count), count.div_ceil(layout.cols));
    let (s, gap) = (layout.scale, layout.gap);
    let out_w = (cols * (width + gap) + gap) * s;
    let out_h = (rows * (height + gap) + gap) * s;
    let mut canvas = vec![255u8; out_w * out_h];
    for (i, image) in pixels.chunks(height * width).enumerate() {
        let (top, left) = ((i / cols) * (height + gap) + gap, (i % cols) * (width + gap) + gap);
        for y in 0..height {
            for x in 0..width {
                let v = image[y * width + x];
                // NaN draws black: a broken generator should look broken.
                let grey = if v.is_nan() { 0 } else { ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8 };
                for dy in 0..s {
                    let row = ((top + y) * s + dy) * out_w;
                    canvas[row + (left + x) * s..row + (left + x + 1) * s].fill(grey);
                }
            }
        }
    }
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, out_w as u32, out_h as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&canvas)?;
    }
    Ok(png_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn pixels_land_where_the_layout_puts_them() {
        // Three 2x2 images on two columns: -1, 0 and 0.5 everywhere, plus one value to clip.
        let mut pixels = vec![-1.0f32; 4];
        pixels.extend([0.0; 4]);
        pixels.extend([0.5, 0.5, 0.5, 7.0]);
        let layout = GridLayout { cols: 2, scale: 2, gap: 1 };
        let (w, h, data) = decode(&png_grid(&pixels, 3, 2, 2, layout).unwrap());
        assert_eq!((w, h), ((2 * 3 + 1) * 2, (2 * 3 + 1) * 2));
        let at = |x: usize, y: usize| data[y * w as usize + x];
        assert_eq!(at(0, 0), 255, "the gap is white");
        assert_eq!(at(2, 2), 0, "image 0 is black");
        assert_eq!(at(3, 5), 0);
        assert_eq!(at(8, 2), 128, "image 1 is mid grey");
        assert_eq!(at(2, 8), 191, "image 2 is light grey");
        assert_eq!(at(4, 10), 255, "its out-of-range pixel is clipped to white");
        assert_eq!(at(11, 11), 255, "the unused fourth cell stays white");
    }

    #[test]
    fn a_wrong_pixel_count_is_named() {
        let err = png_grid(&[0.0; 10], 4, 28, 28, GridLayout::default()).unwrap_err();
        assert!(err.to_string().contains("10 pixel values"), "{err}");
    }
}
