//! safetensors files of named 2-D tensors (F32, F16, BF16 and F64 read as f32; written as F32),
//! and [`read_embeddings`], which opens either format by extension.
use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::npy::{f16_to_f32, read_npy};
use super::{IoError, read_bytes, write_atomic};
use sotalign_engine::Matrix;

/// The tensors of a safetensors file, in file order, plus its string metadata.
pub struct SafetensorsFile {
    pub tensors: Vec<(String, Matrix)>,
    pub metadata: HashMap<String, String>,
}

fn st_err(path: &Path, msg: impl Into<String>) -> IoError {
    IoError::Safetensors {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Read every tensor of a safetensors file as a 2-D f32 [`Matrix`] (1-D tensors become 1 x d).
pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile, IoError> {
    let bytes = read_bytes(path)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| st_err(path, e.to_string()))?;
    let metadata = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    let mut names: Vec<(usize, String)> = Vec::new();
    for (name, view) in st.tensors() {
        // Order tensors by their offset in the file so the listing is stable.
        let off = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        names.push((off, name));
    }
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st.tensor(&name).map_err(|e| st_err(path, e.to_string()))?;
        let (rows, cols) = match view.shape() {
            [r, c] => (*r, *c),
            [d] => (1, *d),
            s => {
                return Err(st_err(
                    path,
                    format!("tensor `{name}` has shape {s:?}; only 1-D and 2-D are supported"),
                ));
            }
        };
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => raw
                .chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            Dtype::BF16 => raw
                .chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            d => {
                return Err(st_err(
                    path,
                    format!("tensor `{name}` has dtype {d:?}; only float tensors are supported"),
                ));
            }
        };
        tensors.push((name, Matrix::from_vec(rows, cols, data)?));
    }
    Ok(SafetensorsFile { tensors, metadata })
}

/// Encode named matrices (F32, shape [rows, cols]) with optional string metadata.
pub fn encode_safetensors(
    tensors: &[(String, Matrix)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, String> {
    let bufs: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, m)| m.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, m), buf) in tensors.iter().zip(&bufs) {
        let v =
            TensorView::new(Dtype::F32, vec![m.rows, m.cols], buf).map_err(|e| e.to_string())?;
        views.push((name.clone(), v));
    }
    let meta = metadata.map(|m| m.into_iter().collect());
    safetensors::serialize(views, meta).map_err(|e| e.to_string())
}

/// Write named matrices to a safetensors file atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Matrix)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), IoError> {
    let bytes = encode_safetensors(tensors, metadata).map_err(|e| st_err(path, e))?;
    write_atomic(path, &bytes)
}

/// Read an embedding matrix from `.npy` or `.safetensors` (by extension). For safetensors,
/// `tensor` names the tensor; it may be omitted when the file holds exactly one.
pub fn read_embeddings(path: &Path, tensor: Option<&str>) -> Result<Matrix, IoError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "npy" => read_npy(path),
        "safetensors" => {
            let f = read_safetensors(path)?;
            let names: Vec<String> = f.tensors.iter().map(|(n, _)| n.clone()).collect();
            let pick = match tensor {
                Some(t) => f.tensors.into_iter().find(|(n, _)| n == t),
                None if f.tensors.len() == 1 => f.tensors.into_iter().next(),
                None => None,
            };
            pick.map(|(_, m)| m).ok_or_else(|| {
                st_err(
                    path,
                    format!("choose one tensor with `path.safetensors:NAME`; it holds {names:?}"),
                )
            })
        }
        _ => Err(IoError::format(
            path,
            "embeddings must be a .npy or .safetensors file",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_with_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.safetensors");
        let a = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = Matrix::from_vec(1, 3, vec![-1.0, 0.5, 9.0]).unwrap();
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_safetensors(
            &p,
            &[("a".into(), a.clone()), ("b".into(), b.clone())],
            Some(meta),
        )
        .unwrap();
        let f = read_safetensors(&p).unwrap();
        assert_eq!(
            f.tensors,
            vec![("a".to_string(), a.clone()), ("b".to_string(), b)]
        );
        assert_eq!(f.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(read_embeddings(&p, Some("a")).unwrap(), a);
        assert!(matches!(
            read_embeddings(&p, None),
            Err(IoError::Safetensors { .. })
        ));
        std::fs::write(dir.path().join("bad.safetensors"), b"not a file").unwrap();
        assert!(read_safetensors(&dir.path().join("bad.safetensors")).is_err());
    }
}
