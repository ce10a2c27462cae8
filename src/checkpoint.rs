//! Checkpoints (SPEC §5): `weights.safetensors` with PyTorch `state_dict` names and shapes
//! (f32), `config.toml`, and the optimiser moments in `optimizer.safetensors`.
//!
//! Every file is written to a temporary name in the same directory, flushed to disk, and
//! renamed over the target, so a reader (or a killed writer) never sees a half-written file.

use crate::error::{Error, Result};
use crate::optim::Optimizer;
use crate::params::ParamStore;
use hmdn_kernels::Real;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the optimiser state inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the model configuration inside a model directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map_err(|e| Error::io(path, e))
}

/// One tensor read from a safetensors file, widened to `f64` (exact for f32/f64/i32/i64
/// values in range).
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f64>,
}

/// All tensors of a safetensors file plus its `__metadata__`.
#[derive(Clone, Debug, Default)]
pub struct TensorFile {
    /// Tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
    /// String metadata.
    pub metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads a safetensors file (f32, f64, i32 and i64 tensors).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let mut out = TensorFile {
            metadata: meta.metadata().clone().unwrap_or_default(),
            ..Default::default()
        };
        for (name, view) in st.tensors() {
            let d = view.data();
            let data: Vec<f64> = match view.dtype() {
                Dtype::F32 => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::I32 => d
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I64 => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has unsupported dtype {other:?}"
                    )))
                }
            };
            out.tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(out)
    }

    /// A tensor by name, or an error naming the file's contents.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Checkpoint(format!("tensor `{name}` not found")))
    }
}

/// Serialises named f32 tensors (`(name, shape, values)`) with string metadata.
pub fn f32_tensors_to_bytes(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Checkpoint(e.to_string()))?;
    safetensors::serialize(views, &metadata).map_err(|e| Error::Checkpoint(e.to_string()))
}

fn to_f32_bytes<T: Real>(v: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for &x in v {
        out.extend_from_slice(&(x.to_f64() as f32).to_le_bytes());
    }
    out
}

/// Serialises every parameter as f32 under its `state_dict` name.
pub fn weights_to_bytes<T: Real>(ps: &ParamStore<T>) -> Result<Vec<u8>> {
    let t: Vec<_> = ps
        .specs
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.shape.clone(),
                to_f32_bytes(&ps.values()[s.range()]),
            )
        })
        .collect();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    f32_tensors_to_bytes(&t, Some(meta))
}

/// Writes `weights.safetensors`-style f32 weights atomically.
pub fn save_weights<T: Real>(path: &Path, ps: &ParamStore<T>) -> Result<()> {
    write_atomic(path, &weights_to_bytes(ps)?)
}

/// Copies the tensors named `prefix + <param name>` from `file` into `ps`. Every parameter must
/// be present with its exact shape; with `exact`, no other tensor with that prefix may exist.
pub fn assign_params<T: Real>(
    ps: &mut ParamStore<T>,
    file: &TensorFile,
    prefix: &str,
    exact: bool,
) -> Result<()> {
    for i in 0..ps.specs.len() {
        let (name, shape, range) = (
            ps.specs[i].name.clone(),
            ps.specs[i].shape.clone(),
            ps.specs[i].range(),
        );
        let key = format!("{prefix}{name}");
        let t = file.tensors.get(&key).ok_or_else(|| {
            Error::Checkpoint(format!(
                "tensor `{key}` is missing (the checkpoint is for a different model or schema)"
            ))
        })?;
        if t.shape != shape {
            return Err(Error::Checkpoint(format!(
                "tensor `{key}` has shape {:?}, the model expects {:?} (vocabulary or configuration differs)",
                t.shape, shape
            )));
        }
        for (dst, &src) in ps.values_mut()[range].iter_mut().zip(&t.data) {
            *dst = T::from_f64(src);
        }
    }
    if exact {
        let known: std::collections::HashSet<&str> =
            ps.specs.iter().map(|s| s.name.as_str()).collect();
        if let Some(extra) = file
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .find(|k| !known.contains(k))
        {
            return Err(Error::Checkpoint(format!(
                "unexpected tensor `{prefix}{extra}`: the checkpoint is for a different model"
            )));
        }
    }
    Ok(())
}

/// Loads `weights.safetensors` into a model's parameters (names and shapes must match exactly).
pub fn load_weights<T: Real>(path: &Path, ps: &mut ParamStore<T>) -> Result<()> {
    let f = TensorFile::read(path)?;
    assign_params(ps, &f, "", true)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

/// Serialises the optimiser moments (`m.<name>`, `v.<name>`) and its step count.
pub fn optimizer_to_bytes<T: Real>(opt: &Optimizer<T>, ps: &ParamStore<T>) -> Result<Vec<u8>> {
    let mut t = Vec::with_capacity(2 * ps.specs.len());
    for s in &ps.specs {
        t.push((
            format!("m.{}", s.name),
            s.shape.clone(),
            to_f32_bytes(&opt.m[s.range()]),
        ));
        t.push((
            format!("v.{}", s.name),
            s.shape.clone(),
            to_f32_bytes(&opt.v[s.range()]),
        ));
    }
    let mut meta = HashMap::new();
    meta.insert("step".to_string(), opt.step.to_string());
    f32_tensors_to_bytes(&t, Some(meta))
}

/// Restores optimiser moments and step from `optimizer.safetensors`.
pub fn load_optimizer<T: Real>(
    path: &Path,
    opt: &mut Optimizer<T>,
    ps: &ParamStore<T>,
) -> Result<()> {
    let f = TensorFile::read(path)?;
    let err = |m: String| Error::Checkpoint(format!("{}: {m}", path.display()));
    opt.step = f
        .metadata
        .get("step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("missing `step` in metadata".into()))?;
    for s in &ps.specs {
        for (which, buf) in [("m", &mut opt.m), ("v", &mut opt.v)] {
            let t = f
                .get(&format!("{which}.{}", s.name))
                .map_err(|e| err(e.to_string()))?;
            if t.shape != s.shape {
                return Err(err(format!(
                    "`{which}.{}` has shape {:?}, expected {:?}",
                    s.name, t.shape, s.shape
                )));
            }
            for (d, &x) in buf[s.range()].iter_mut().zip(&t.data) {
                *d = T::from_f64(x);
            }
        }
    }
    Ok(())
}
