//! `--device cpu|cuda[:N]`: CUDA only when built with the `cuda` feature.
use candle_core::Device;

use super::EncoderError;

/// Parse a device name. `cuda` means `cuda:0`.
pub fn parse_device(spec: &str) -> Result<Device, EncoderError> {
    let s = spec.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                EncoderError::Device(format!("`{spec}`: expected cpu, cuda or cuda:N"))
            })?,
        None => {
            return Err(EncoderError::Device(format!(
                "`{spec}`: expected cpu, cuda or cuda:N"
            )));
        }
    };
    cuda_device(ordinal, spec)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize, spec: &str) -> Result<Device, EncoderError> {
    Device::new_cuda(ordinal).map_err(|e| EncoderError::Device(format!("`{spec}`: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize, spec: &str) -> Result<Device, EncoderError> {
    Err(EncoderError::Device(format!(
        "`{spec}`: this build has no CUDA support; rebuild with `cargo build --features cuda`"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("CPU").unwrap().is_cpu());
        assert!(matches!(parse_device("tpu"), Err(EncoderError::Device(_))));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(EncoderError::Device(_))
        ));
        #[cfg(not(feature = "cuda"))]
        {
            let e = parse_device("cuda:1").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
