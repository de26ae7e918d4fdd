//! MNIST (LeCun et al.): the four canonical `*-idx?-ubyte.gz` files, checked and decoded.
//!
//! Files: `<data-dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`; when missing and
//! downloads are allowed they come from PyTorch's public mirror (see [`crate::data`]). Every load
//! checks the sha256 of each file's decompressed bytes against the published ones (the same list as
//! `../shared/README.md`), so a damaged or different file is an error that names it, wherever it
//! came from. Images decode to `(n, 28, 28)` bytes; [`to_unit_range`] maps pixels to [-1, 1] as the
//! TensorFlow DCGAN tutorial does (`(x - 127.5) / 127.5`).

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::data::{DataError, DataFile, DataPaths, Source};

pub const ROWS: usize = 28;
pub const COLS: usize = 28;

/// One MNIST file: where it lives and the sha256 of its decompressed bytes.
struct MnistFile {
    file: DataFile,
    sha256: &'static str,
}

const fn mnist(what: &'static str, local: &'static str, url: &'static str, sha256: &'static str) -> MnistFile {
    MnistFile { file: DataFile { what, local, source: Source::Url(url), sha256: None }, sha256 }
}

const TRAIN_IMAGES: MnistFile = mnist(
    "MNIST train images",
    "mnist/train-images-idx3-ubyte.gz",
    "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
);
const TRAIN_LABELS: MnistFile = mnist(
    "MNIST train labels",
    "mnist/train-labels-idx1-ubyte.gz",
    "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
);
const TEST_IMAGES: MnistFile = mnist(
    "MNIST test images",
    "mnist/t10k-images-idx3-ubyte.gz",
    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
);
const TEST_LABELS: MnistFile = mnist(
    "MNIST test labels",
    "mnist/t10k-labels-idx1-ubyte.gz",
    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
);

/// One split: `images[i * 784..(i + 1) * 784]` is image `i`, row-major, 0 = white.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Split {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * ROWS * COLS..(i + 1) * ROWS * COLS]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mnist {
    pub train: Split,
    pub test: Split,
}

fn gunzip_checked(path: &Path, expected: &str) -> Result<Vec<u8>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::invalid(path, format!("not a readable gzip file: {e}")))?;
    let found = hex::encode(Sha256::digest(&bytes));
    if found != expected {
        return Err(DataError::invalid(
            path,
            format!("sha256 of the decompressed bytes is {found}, the published MNIST file's is {expected}"),
        ));
    }
    Ok(bytes)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes an idx file with magic `magic` and `dims` dimensions: the sizes and the payload.
fn idx<'a>(path: &Path, bytes: &'a [u8], magic: u32, dims: usize) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let header = 4 + 4 * dims;
    if bytes.len() < header || be_u32(bytes, 0) != magic {
        return Err(DataError::invalid(path, format!("not an idx file with magic {magic:#x}")));
    }
    let sizes: Vec<usize> = (0..dims).map(|d| be_u32(bytes, 4 + 4 * d) as usize).collect();
    let payload = &bytes[header..];
    if payload.len() != sizes.iter().product::<usize>() {
        return Err(DataError::invalid(path, format!("sizes {sizes:?} do not match {} payload bytes", payload.len())));
    }
    Ok((sizes, payload))
}

fn split(paths: &DataPaths, images: &MnistFile, labels: &MnistFile) -> Result<Split, DataError> {
    let image_path = paths.locate(&images.file)?;
    let label_path = paths.locate(&labels.file)?;
    let image_bytes = gunzip_checked(&image_path, images.sha256)?;
    let label_bytes = gunzip_checked(&label_path, labels.sha256)?;
    let (sizes, pixels) = idx(&image_path, &image_bytes, 0x0803, 3)?;
    let (label_sizes, label_data) = idx(&label_path, &label_bytes, 0x0801, 1)?;
    if sizes[1..] != [ROWS, COLS] || sizes[0] != label_sizes[0] {
        return Err(DataError::invalid(
            &image_path,
            format!("images {sizes:?} and labels {label_sizes:?} do not pair up"),
        ));
    }
    Ok(Split { images: pixels.to_vec(), labels: label_data.to_vec() })
}

/// Both splits, each file checked.
pub fn load(paths: &DataPaths) -> Result<Mnist, DataError> {
    Ok(Mnist { train: split(paths, &TRAIN_IMAGES, &TRAIN_LABELS)?, test: split(paths, &TEST_IMAGES, &TEST_LABELS)? })
}

/// Pixels `0..=255` to `[-1, 1]`.
pub fn to_unit_range(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&p| (f32::from(p) - 127.5) / 127.5).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_facts_hold() {
        let mnist = load(&crate::data::test_paths()).expect("MNIST: set SWEEP_DATA_DIR");
        let counts = |labels: &[u8]| {
            let mut c = [0usize; 10];
            labels.iter().for_each(|&l| c[l as usize] += 1);
            c
        };
        assert_eq!(counts(&mnist.train.labels), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]);
        assert_eq!(counts(&mnist.test.labels), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
        assert_eq!(&mnist.train.labels[..10], &[5, 0, 4, 1, 9, 2, 1, 3, 1, 4]);
        assert_eq!(&mnist.test.labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
        let unit = to_unit_range(mnist.train.image(0));
        assert_eq!(unit.len(), 784);
        assert!(unit.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(to_unit_range(&[0, 255]), [-1.0, 1.0]);
    }

    #[test]
    fn a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        std::fs::write(&path, b"garbage").unwrap();
        let err = gunzip_checked(&path, "00").unwrap_err().to_string();
        assert!(err.contains("x.gz") && err.contains("gzip"), "{err}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"not mnist").unwrap();
        std::fs::write(&path, gz.finish().unwrap()).unwrap();
        let err = gunzip_checked(&path, TRAIN_LABELS.sha256).unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
    }
}
