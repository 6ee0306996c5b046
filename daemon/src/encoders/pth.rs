//! Reader for PyTorch's LEGACY (pre-1.6, non-zip) `torch.save` format.
//!
//! Why our own reader: the EfficientNet-Lite0 weights ship only as such a file, and candle reads
//! the zip format but not this one. A legacy file is a sequence of pickles followed by raw data:
//!
//! 1. a magic number (a long), 2. the protocol version, 3. system info (endianness, type sizes),
//! 4. the object itself (here an `OrderedDict` of tensors), whose tensors point at storages via
//!    persistent ids `('storage', <StorageType>, key, location, numel, view_metadata)` and are
//!    rebuilt with `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`,
//! 5. the list of storage keys, then for each key in that order an int64 element count and the
//!    storage's raw little-endian bytes.
//!
//! The pickle VM below implements only the opcodes such files use (protocol 2), and fails with a
//! typed error naming any other opcode. Tensors are materialised honouring size, stride and
//! storage offset: the EfficientNet file stores its convolutions in TensorFlow (HWIO) memory
//! order with non-contiguous strides, so reading the storage flat would scramble the weights.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use thiserror::Error;

/// Magic number written by `torch.save` in the legacy format (0x1950a86a20f9469cfc6c).
const LEGACY_MAGIC: u128 = 0x1950a86a20f9469cfc6c;
/// Protocol version written after the magic number.
const LEGACY_PROTOCOL: i64 = 1001;

#[derive(Debug, Error)]
pub enum PthError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: this is the zip-based torch.save format (PyTorch >= 1.6), not the legacy one")]
    ZipFormat(String),
    #[error("not a legacy PyTorch file: {0}")]
    NotLegacy(String),
    #[error("pickle: unsupported opcode 0x{op:02x} at byte {pos}")]
    UnsupportedOpcode { op: u8, pos: usize },
    #[error("pickle: truncated input at byte {0}")]
    Truncated(usize),
    #[error("pickle: malformed at byte {pos}: {what}")]
    Malformed { pos: usize, what: String },
    #[error("unsupported storage type `{0}`")]
    UnsupportedStorage(String),
    #[error("tensor `{name}`: {what}")]
    BadTensor { name: String, what: String },
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Element type of a storage, from its pickled class name (`torch.FloatStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    F32,
    F64,
    I64,
    I32,
    U8,
}

impl StorageKind {
    fn from_name(name: &str) -> Result<Self, PthError> {
        Ok(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ByteStorage" | "BoolStorage" => Self::U8,
            other => return Err(PthError::UnsupportedStorage(other.to_string())),
        })
    }

    fn elem_size(self) -> usize {
        match self {
            Self::F32 | Self::I32 => 4,
            Self::F64 | Self::I64 => 8,
            Self::U8 => 1,
        }
    }
}

/// A tensor as described by the pickle, before its storage bytes are known.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub storage_key: String,
    pub kind: StorageKind,
    /// Element offset into the storage (includes a legacy storage-view offset, if any).
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

/// Values of the minimal pickle VM.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A long too big for i64 (only the magic number); kept as its little-endian value.
    BigInt(u128),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage {
        key: String,
        kind: StorageKind,
        offset: usize,
    },
    Tensor(TensorRef),
    /// Result of calling a global we do not interpret (kept so the pickle still parses).
    Opaque(String),
    Mark,
}

/// One pickle, interpreted from `data[pos..]`; returns the value and the position after STOP.
fn run_pickle(data: &[u8], mut pos: usize) -> Result<(Value, usize), PthError> {
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();

    fn take<'a>(data: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], PthError> {
        let end = pos.checked_add(n).ok_or(PthError::Truncated(*pos))?;
        let s = data.get(*pos..end).ok_or(PthError::Truncated(*pos))?;
        *pos = end;
        Ok(s)
    }
    fn u8_(data: &[u8], pos: &mut usize) -> Result<u8, PthError> {
        Ok(take(data, pos, 1)?[0])
    }
    fn u16_(data: &[u8], pos: &mut usize) -> Result<u16, PthError> {
        let b = take(data, pos, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32_(data: &[u8], pos: &mut usize) -> Result<u32, PthError> {
        let b = take(data, pos, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn line(data: &[u8], pos: &mut usize) -> Result<String, PthError> {
        let rest = data.get(*pos..).ok_or(PthError::Truncated(*pos))?;
        let nl = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PthError::Truncated(*pos))?;
        let s = String::from_utf8_lossy(&rest[..nl]).into_owned();
        *pos += nl + 1;
        Ok(s)
    }
    let malformed = |pos: usize, what: &str| PthError::Malformed {
        pos,
        what: what.to_string(),
    };
    // Pop everything above the topmost MARK (and the mark itself).
    fn pop_mark(stack: &mut Vec<Value>, pos: usize) -> Result<Vec<Value>, PthError> {
        let m =
            stack
                .iter()
                .rposition(|v| matches!(v, Value::Mark))
                .ok_or(PthError::Malformed {
                    pos,
                    what: "no MARK on the stack".into(),
                })?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    }
    fn pop(stack: &mut Vec<Value>, pos: usize) -> Result<Value, PthError> {
        stack.pop().ok_or(PthError::Malformed {
            pos,
            what: "stack underflow".into(),
        })
    }

    loop {
        let op_pos = pos;
        let op = u8_(data, &mut pos)?;
        match op {
            0x80 => {
                // PROTO
                let p = u8_(data, &mut pos)?;
                if p > 2 {
                    return Err(malformed(
                        op_pos,
                        &format!("pickle protocol {p} (expected <= 2)"),
                    ));
                }
            }
            b'.' => {
                // STOP
                let v = pop(&mut stack, op_pos)?;
                return Ok((v, pos));
            }
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(u32_(data, &mut pos)? as i32 as i64)),
            b'K' => stack.push(Value::Int(u8_(data, &mut pos)? as i64)),
            b'M' => stack.push(Value::Int(u16_(data, &mut pos)? as i64)),
            0x8a => {
                // LONG1: n-byte little-endian two's complement
                let n = u8_(data, &mut pos)? as usize;
                let b = take(data, &mut pos, n)?;
                if n <= 8 {
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xffu8; 8]
                    } else {
                        [0u8; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    stack.push(Value::Int(i64::from_le_bytes(buf)));
                } else if n <= 16 {
                    let mut buf = [0u8; 16];
                    buf[..n].copy_from_slice(b);
                    stack.push(Value::BigInt(u128::from_le_bytes(buf)));
                } else {
                    return Err(malformed(op_pos, "LONG1 wider than 16 bytes"));
                }
            }
            b'G' => {
                let b = take(data, &mut pos, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            b'X' => {
                // BINUNICODE
                let n = u32_(data, &mut pos)? as usize;
                let b = take(data, &mut pos, n)?;
                let s = std::str::from_utf8(b)
                    .map_err(|_| malformed(op_pos, "invalid UTF-8 string"))?;
                stack.push(Value::Str(s.to_string()));
            }
            b'U' => {
                // SHORT_BINSTRING (python 2 str)
                let n = u8_(data, &mut pos)? as usize;
                let b = take(data, &mut pos, n)?;
                stack.push(Value::Str(String::from_utf8_lossy(b).into_owned()));
            }
            b'T' => {
                // BINSTRING
                let n = u32_(data, &mut pos)? as usize;
                let b = take(data, &mut pos, n)?;
                stack.push(Value::Str(String::from_utf8_lossy(b).into_owned()));
            }
            b'c' => {
                // GLOBAL "module\nname\n"
                let module = line(data, &mut pos)?;
                let name = line(data, &mut pos)?;
                stack.push(Value::Global(module, name));
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = pop_mark(&mut stack, op_pos)?;
                stack.push(Value::Tuple(items));
            }
            0x85 | 0x86 | 0x87 => {
                // TUPLE1/2/3
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(malformed(op_pos, "stack underflow in TUPLEn"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b']' => stack.push(Value::List(Vec::new())),
            b'l' => {
                let items = pop_mark(&mut stack, op_pos)?;
                stack.push(Value::List(items));
            }
            b'a' => {
                let v = pop(&mut stack, op_pos)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(malformed(op_pos, "APPEND to a non-list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack, op_pos)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(malformed(op_pos, "APPENDS to a non-list")),
                }
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b's' => {
                let v = pop(&mut stack, op_pos)?;
                let k = pop(&mut stack, op_pos)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(malformed(op_pos, "SETITEM on a non-dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack, op_pos)?;
                if items.len() % 2 != 0 {
                    return Err(malformed(op_pos, "SETITEMS with an odd number of items"));
                }
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(malformed(op_pos, "SETITEMS on a non-dict")),
                }
            }
            b'q' => {
                let idx = u8_(data, &mut pos)? as u32;
                let v = stack
                    .last()
                    .ok_or_else(|| malformed(op_pos, "BINPUT on empty stack"))?;
                memo.insert(idx, v.clone());
            }
            b'r' => {
                let idx = u32_(data, &mut pos)?;
                let v = stack
                    .last()
                    .ok_or_else(|| malformed(op_pos, "LONG_BINPUT on empty stack"))?;
                memo.insert(idx, v.clone());
            }
            b'h' | b'j' => {
                let idx = if op == b'h' {
                    u8_(data, &mut pos)? as u32
                } else {
                    u32_(data, &mut pos)?
                };
                let v = memo
                    .get(&idx)
                    .ok_or_else(|| malformed(op_pos, &format!("memo key {idx} not set")))?;
                stack.push(v.clone());
            }
            b'0' => {
                pop(&mut stack, op_pos)?;
            }
            b'2' => {
                let v = stack
                    .last()
                    .cloned()
                    .ok_or_else(|| malformed(op_pos, "DUP on empty stack"))?;
                stack.push(v);
            }
            b'Q' => {
                // BINPERSID: ('storage', StorageType, key, location, numel, view_metadata)
                let pid = pop(&mut stack, op_pos)?;
                stack.push(persistent_load(pid, op_pos)?);
            }
            b'R' => {
                // REDUCE
                let args = pop(&mut stack, op_pos)?;
                let callable = pop(&mut stack, op_pos)?;
                stack.push(reduce(callable, args, op_pos)?);
            }
            b'b' => {
                // BUILD: state for the object below; our objects carry none we need
                // (OrderedDict `_metadata` only records module versions).
                pop(&mut stack, op_pos)?;
                if stack.is_empty() {
                    return Err(malformed(op_pos, "BUILD on empty stack"));
                }
            }
            other => {
                return Err(PthError::UnsupportedOpcode {
                    op: other,
                    pos: op_pos,
                });
            }
        }
    }
}

fn persistent_load(pid: Value, pos: usize) -> Result<Value, PthError> {
    let bad = |what: &str| PthError::Malformed {
        pos,
        what: what.to_string(),
    };
    let Value::Tuple(items) = pid else {
        return Err(bad("persistent id is not a tuple"));
    };
    match items.as_slice() {
        [
            Value::Str(tag),
            Value::Global(_, type_name),
            Value::Str(key),
            _location,
            Value::Int(_numel),
            view,
        ] if tag == "storage" => {
            let kind = StorageKind::from_name(type_name)?;
            // A legacy storage *view* shares its root storage: (view_key, offset, view_size).
            let (key, offset) = match view {
                Value::None => (key.clone(), 0usize),
                Value::Tuple(v) => match v.as_slice() {
                    [_, Value::Int(off), _] if *off >= 0 => (key.clone(), *off as usize),
                    _ => return Err(bad("unrecognised storage view metadata")),
                },
                _ => return Err(bad("unrecognised storage view metadata")),
            };
            Ok(Value::Storage { key, kind, offset })
        }
        _ => Err(bad("persistent id is not a ('storage', ...) tuple")),
    }
}

fn as_usize_vec(v: &Value, pos: usize, what: &str) -> Result<Vec<usize>, PthError> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                _ => Err(PthError::Malformed {
                    pos,
                    what: format!("{what}: not a non-negative int"),
                }),
            })
            .collect(),
        _ => Err(PthError::Malformed {
            pos,
            what: format!("{what}: not a tuple"),
        }),
    }
}

fn reduce(callable: Value, args: Value, pos: usize) -> Result<Value, PthError> {
    let Value::Global(module, name) = callable else {
        return Err(PthError::Malformed {
            pos,
            what: "REDUCE on a non-global".into(),
        });
    };
    let Value::Tuple(args) = args else {
        return Err(PthError::Malformed {
            pos,
            what: "REDUCE arguments are not a tuple".into(),
        });
    };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Ok(Value::Dict(Vec::new())),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let [
                Value::Storage {
                    key,
                    kind,
                    offset: view_off,
                },
                Value::Int(off),
                size,
                stride,
                ..,
            ] = args.as_slice()
            else {
                return Err(PthError::Malformed {
                    pos,
                    what: "unexpected _rebuild_tensor arguments".into(),
                });
            };
            if *off < 0 {
                return Err(PthError::Malformed {
                    pos,
                    what: "negative storage offset".into(),
                });
            }
            let size = as_usize_vec(size, pos, "tensor size")?;
            let stride = as_usize_vec(stride, pos, "tensor stride")?;
            if size.len() != stride.len() {
                return Err(PthError::Malformed {
                    pos,
                    what: "size and stride ranks differ".into(),
                });
            }
            Ok(Value::Tensor(TensorRef {
                storage_key: key.clone(),
                kind: *kind,
                offset: view_off + *off as usize,
                size,
                stride,
            }))
        }
        // nn.Parameter(data, requires_grad, hooks): the data is what we want.
        ("torch._utils", "_rebuild_parameter") => match args.into_iter().next() {
            Some(t @ Value::Tensor(_)) => Ok(t),
            _ => Err(PthError::Malformed {
                pos,
                what: "_rebuild_parameter without a tensor".into(),
            }),
        },
        _ => Ok(Value::Opaque(format!("{module}.{name}"))),
    }
}

/// Raw storages of the file: key -> (kind, little-endian bytes).
struct Storages<'a> {
    map: HashMap<String, (StorageKind, &'a [u8])>,
}

/// Parse a legacy `.pth` held in memory into its named tensor references and storages, then
/// materialise each tensor as a contiguous candle tensor on `device`.
pub fn parse_legacy(data: &[u8], device: &Device) -> Result<Vec<(String, Tensor)>, PthError> {
    if data.starts_with(b"PK") {
        return Err(PthError::ZipFormat("input".into()));
    }
    let (magic, pos) = run_pickle(data, 0)?;
    match magic {
        Value::BigInt(m) if m == LEGACY_MAGIC => {}
        _ => return Err(PthError::NotLegacy("missing magic number".into())),
    }
    let (proto, pos) = run_pickle(data, pos)?;
    if proto != Value::Int(LEGACY_PROTOCOL) {
        return Err(PthError::NotLegacy(format!(
            "protocol version {proto:?}, expected {LEGACY_PROTOCOL}"
        )));
    }
    let (sys_info, pos) = run_pickle(data, pos)?;
    check_sys_info(&sys_info)?;
    let (obj, pos) = run_pickle(data, pos)?;
    let (keys, mut pos) = run_pickle(data, pos)?;

    // Named tensors of the state dict, in file order.
    let entries = match obj {
        Value::Dict(d) => d,
        _ => {
            return Err(PthError::NotLegacy(
                "top-level object is not a dict (state_dict)".into(),
            ));
        }
    };
    let mut named: Vec<(String, TensorRef)> = Vec::new();
    let mut kinds: HashMap<String, StorageKind> = HashMap::new();
    for (k, v) in entries {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        kinds.insert(t.storage_key.clone(), t.kind);
        named.push((name, t));
    }

    let Value::List(keys) = keys else {
        return Err(PthError::NotLegacy("storage key list missing".into()));
    };
    let mut storages = Storages {
        map: HashMap::new(),
    };
    for k in keys {
        let Value::Str(key) = k else {
            return Err(PthError::NotLegacy("storage key is not a string".into()));
        };
        let kind = *kinds.get(&key).unwrap_or(&StorageKind::U8);
        let hdr = data.get(pos..pos + 8).ok_or(PthError::Truncated(pos))?;
        let mut n = [0u8; 8];
        n.copy_from_slice(hdr);
        let numel = i64::from_le_bytes(n);
        if numel < 0 {
            return Err(PthError::Malformed {
                pos,
                what: format!("storage {key}: negative size"),
            });
        }
        pos += 8;
        let nbytes = (numel as usize)
            .checked_mul(kind.elem_size())
            .ok_or(PthError::Truncated(pos))?;
        let bytes = data
            .get(pos..pos + nbytes)
            .ok_or(PthError::Truncated(pos))?;
        pos += nbytes;
        storages.map.insert(key, (kind, bytes));
    }

    named
        .into_iter()
        .map(|(name, t)| {
            let tensor = materialise(&name, &t, &storages, device)?;
            Ok((name, tensor))
        })
        .collect()
}

fn check_sys_info(v: &Value) -> Result<(), PthError> {
    if let Value::Dict(d) = v {
        for (k, val) in d {
            if *k == Value::Str("little_endian".into()) && *val == Value::Bool(false) {
                return Err(PthError::NotLegacy(
                    "big-endian files are not supported".into(),
                ));
            }
        }
        Ok(())
    } else {
        Err(PthError::NotLegacy("system info is not a dict".into()))
    }
}

/// Gather a strided view of a storage into a contiguous buffer (row-major over `size`).
pub fn gather_strided<T: Copy>(
    src: &[T],
    offset: usize,
    size: &[usize],
    stride: &[usize],
) -> Option<Vec<T>> {
    let numel: usize = size.iter().product();
    if numel == 0 {
        return Some(Vec::new());
    }
    // Largest element the view touches must lie inside the storage.
    let max = size
        .iter()
        .zip(stride)
        .map(|(&s, &st)| (s - 1) * st)
        .sum::<usize>()
        + offset;
    if max >= src.len() {
        return None;
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; size.len()];
    for _ in 0..numel {
        let at = offset + idx.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.push(src[at]);
        for d in (0..size.len()).rev() {
            idx[d] += 1;
            if idx[d] < size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Some(out)
}

fn materialise(
    name: &str,
    t: &TensorRef,
    st: &Storages,
    device: &Device,
) -> Result<Tensor, PthError> {
    let bad = |what: String| PthError::BadTensor {
        name: name.to_string(),
        what,
    };
    let (kind, bytes) = st
        .map
        .get(&t.storage_key)
        .ok_or_else(|| bad(format!("storage {} missing", t.storage_key)))?;
    let oob = || {
        bad(format!(
            "view (offset {}, size {:?}, stride {:?}) exceeds its storage",
            t.offset, t.size, t.stride
        ))
    };
    let tensor = match kind {
        StorageKind::F32 => {
            let v: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let g = gather_strided(&v, t.offset, &t.size, &t.stride).ok_or_else(oob)?;
            Tensor::from_vec(g, t.size.as_slice(), device)?
        }
        StorageKind::F64 => {
            let v: Vec<f64> = bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            let g = gather_strided(&v, t.offset, &t.size, &t.stride).ok_or_else(oob)?;
            Tensor::from_vec(g, t.size.as_slice(), device)?.to_dtype(DType::F32)?
        }
        StorageKind::I64 => {
            let v: Vec<i64> = bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            let g = gather_strided(&v, t.offset, &t.size, &t.stride).ok_or_else(oob)?;
            Tensor::from_vec(g, t.size.as_slice(), device)?
        }
        StorageKind::I32 => {
            let v: Vec<i64> = bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect();
            let g = gather_strided(&v, t.offset, &t.size, &t.stride).ok_or_else(oob)?;
            Tensor::from_vec(g, t.size.as_slice(), device)?
        }
        StorageKind::U8 => {
            let g = gather_strided(bytes, t.offset, &t.size, &t.stride).ok_or_else(oob)?;
            Tensor::from_vec(g, t.size.as_slice(), device)?
        }
    };
    Ok(tensor)
}

/// Load a legacy `.pth` state dict from disk into named tensors.
pub fn load_legacy(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, PthError> {
    let data = std::fs::read(path).map_err(|source| PthError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if data.starts_with(b"PK") {
        return Err(PthError::ZipFormat(path.display().to_string()));
    }
    Ok(parse_legacy(&data, device)?.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_honours_stride_and_offset() {
        // A 2x3 view, transposed storage (column-major), starting at element 1.
        let storage = [100.0f32, 0.0, 3.0, 1.0, 4.0, 2.0, 5.0];
        let g = gather_strided(&storage, 1, &[2, 3], &[1, 2]).unwrap();
        assert_eq!(g, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        // out of bounds view is refused, not a panic
        assert!(gather_strided(&storage, 2, &[2, 3], &[1, 2]).is_none());
    }

    /// Hand-assembled legacy file: one 2x2 float tensor stored transposed, at offset 1.
    fn tiny_legacy_file() -> Vec<u8> {
        let mut f = Vec::new();
        // magic: PROTO 2, LONG1 10 bytes, STOP
        f.extend([0x80, 2, 0x8a, 10]);
        f.extend(&LEGACY_MAGIC.to_le_bytes()[..10]);
        f.push(b'.');
        // protocol 1001
        f.extend([0x80, 2, b'M']);
        f.extend(1001u16.to_le_bytes());
        f.push(b'.');
        // sys info {'little_endian': True}
        f.extend([0x80, 2, b'}', b'X']);
        f.extend(13u32.to_le_bytes());
        f.extend(b"little_endian");
        f.extend([0x88, b's', b'.']);
        // state dict
        f.extend([0x80, 2]);
        f.extend(b"ccollections\nOrderedDict\n");
        f.extend([b')', b'R', b'X']);
        f.extend(1u32.to_le_bytes());
        f.extend(b"w");
        f.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
        f.push(b'(');
        f.extend([b'(', b'X']);
        f.extend(7u32.to_le_bytes());
        f.extend(b"storage");
        f.extend(b"ctorch\nFloatStorage\n");
        f.push(b'X');
        f.extend(1u32.to_le_bytes());
        f.extend(b"0");
        f.push(b'X');
        f.extend(3u32.to_le_bytes());
        f.extend(b"cpu");
        f.extend([b'K', 5, b'N', b't', b'Q']);
        f.extend([b'K', 1]); // offset
        f.extend([b'K', 2, b'K', 2, 0x86]); // size (2,2)
        f.extend([b'K', 1, b'K', 2, 0x86]); // stride (1,2)
        f.extend([0x89, b')', b't', b'R', b's', b'.']);
        // storage keys ['0']
        f.extend([0x80, 2, b']', b'X']);
        f.extend(1u32.to_le_bytes());
        f.extend(b"0");
        f.extend([b'a', b'.']);
        // storage data: 5 floats
        f.extend(5i64.to_le_bytes());
        for v in [9.0f32, 1.0, 3.0, 2.0, 4.0] {
            f.extend(v.to_le_bytes());
        }
        f
    }

    #[test]
    fn parses_hand_built_legacy_file() {
        let f = tiny_legacy_file();
        let t = parse_legacy(&f, &Device::Cpu).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "w");
        let v: Vec<Vec<f32>> = t[0].1.to_vec2().unwrap();
        // storage[1..] = [1,3,2,4] read with stride (1,2): [[1,2],[3,4]]
        assert_eq!(v, vec![vec![1.0, 2.0], vec![3.0, 4.0]]);
    }

    #[test]
    fn truncated_file_is_an_error_not_a_panic() {
        let f = tiny_legacy_file();
        for cut in [3, 20, 60, f.len() - 3] {
            assert!(
                parse_legacy(&f[..cut], &Device::Cpu).is_err(),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse_legacy(b"PK\x03\x04", &Device::Cpu),
            Err(PthError::ZipFormat(_))
        ));
    }
}
