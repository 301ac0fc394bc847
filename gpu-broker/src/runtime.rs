//! ONNX Runtime: finding and loading the shared library, loading models onto the provider
//! they really run on, and running them on wire tensors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use broker_client::{Dtype, ErrorCode, Tensor};
use ort::ep::{self, ExecutionProvider};
use ort::session::Session;
use ort::value::{DynValue, TensorElementType, ValueType};

use crate::repo::{ModelSpec, Provider, TensorSpec};

/// The library version setup fetches (PyPI `onnxruntime`).
pub const ORT_VERSION: &str = "1.31.1";

/// A failure with the code the client is told.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What kind.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
}

impl Failure {
    /// A failure of `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// Where the library is: `explicit`, else `$ORT_DYLIB_PATH`, else beside this executable
/// (where `cargo xtask setup` puts it). Errors name every place tried.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_owned());
    } else {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            candidates.push(PathBuf::from(p));
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_owned))
        {
            candidates.push(dir.join(format!("libonnxruntime.so.{ORT_VERSION}")));
        }
    }
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(format!(
        "the ONNX Runtime library was not found (tried: {}); run `cargo xtask setup`, which \
         fetches onnxruntime {ORT_VERSION} from PyPI, or point ORT_DYLIB_PATH or --ort-lib at \
         libonnxruntime.so",
        if tried.is_empty() {
            "nothing".to_owned()
        } else {
            tried.join(", ")
        }
    ))
}

/// Load the library and create the environment, telemetry off. The caller has already
/// set `ORT_DISABLE_TELEMETRY=1` in this process's environment.
pub fn init(library: &Path) -> Result<(), String> {
    let environment = ort::init_from(library)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", library.display()))?
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
    ENVIRONMENT
        .set(environment)
        .map_err(|_| "ONNX Runtime is already initialised".to_owned())
}

/// The environment every session is made in, set once by [`init`].
static ENVIRONMENT: std::sync::OnceLock<ort::environment::Environment> = std::sync::OnceLock::new();

/// Whether the loaded library was built with the CUDA provider (says nothing of a GPU).
pub fn cuda_compiled_in() -> bool {
    ep::CUDA::is_available().unwrap_or(false)
}

/// A model ready to run.
pub struct Loaded {
    /// Its manifest.
    pub spec: ModelSpec,
    pub(crate) session: Session,
    /// A generative model's tokenizer and conventions.
    pub generator: Option<std::sync::Arc<crate::generate::Generator>>,
    /// The provider it really runs on: "cuda" or "cpu".
    pub provider: &'static str,
    /// Why it is not on a preferred provider, when it is not.
    pub fallback: Option<String>,
    /// Time to create the session, in milliseconds.
    pub load_ms: f64,
}

fn element_type(dtype: Dtype) -> TensorElementType {
    match dtype {
        Dtype::Float32 => TensorElementType::Float32,
        Dtype::Float64 => TensorElementType::Float64,
        Dtype::Int32 => TensorElementType::Int32,
        Dtype::Int64 => TensorElementType::Int64,
        Dtype::Uint8 => TensorElementType::Uint8,
        Dtype::Bool => TensorElementType::Bool,
    }
}

pub(crate) fn load_failed(spec: &ModelSpec, what: impl std::fmt::Display) -> Failure {
    Failure::new(
        ErrorCode::LoadFailed,
        format!("model {:?} could not be loaded: {what}", spec.name),
    )
}

/// Check the session's real inputs or outputs against the manifest's.
fn check_outlets(
    spec: &ModelSpec,
    what: &str,
    declared: &[TensorSpec],
    real: &[ort::value::Outlet],
) -> Result<(), Failure> {
    if declared.len() != real.len() {
        return Err(load_failed(
            spec,
            format!(
                "the manifest declares {} {what}s, the model has {} ({})",
                declared.len(),
                real.len(),
                real.iter().map(|o| o.name()).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    for (d, r) in declared.iter().zip(real) {
        let (ty, shape) = match r.dtype() {
            ValueType::Tensor { ty, shape, .. } => (*ty, shape.to_vec()),
            other => {
                return Err(load_failed(
                    spec,
                    format!("{what} {:?} is not a tensor ({other})", r.name()),
                ));
            }
        };
        let mismatch = d.name != r.name()
            || element_type(d.dtype) != ty
            || d.shape.len() != shape.len()
            || d.shape.iter().zip(&shape).any(|(a, b)| *b >= 0 && *a != *b);
        if mismatch {
            return Err(load_failed(
                spec,
                format!(
                    "the manifest's {what} {:?} ({}, shape {:?}) does not match the model's {:?} ({ty}, shape {shape:?})",
                    d.name,
                    d.dtype.name(),
                    d.shape,
                    r.name()
                ),
            ));
        }
    }
    Ok(())
}

/// Load `spec`'s model onto the first provider that really takes it.
pub fn load(spec: ModelSpec) -> Result<Loaded, Failure> {
    let started = Instant::now();
    let path = spec.model_path();
    if !path.is_file() {
        return Err(load_failed(
            &spec,
            format!("{} does not exist", path.display()),
        ));
    }
    let environment = ENVIRONMENT
        .get()
        .ok_or_else(|| load_failed(&spec, "ONNX Runtime is not initialised"))?;
    let mut builder = Session::builder(environment)
        .and_then(|b| {
            b.with_intra_threads(spec.intra_threads())
                .map_err(Into::into)
        })
        .map_err(|e| load_failed(&spec, e))?;
    let mut provider = "cpu";
    let mut fallback = None;
    if spec.providers.first() == Some(&Provider::Cuda) || spec.require_gpu {
        let why_not = if !cuda_compiled_in() {
            Some(
                "this ONNX Runtime library has no CUDA provider (the CPU wheel from PyPI)"
                    .to_owned(),
            )
        } else {
            match ep::CUDA::default().register(&mut builder) {
                Ok(()) => None,
                Err(e) => Some(format!("registering the CUDA provider failed: {e}")),
            }
        };
        match why_not {
            None => provider = "cuda",
            Some(why) if spec.require_gpu => {
                return Err(Failure::new(
                    ErrorCode::GpuRequired,
                    format!(
                        "model {:?} requires a GPU and none can be used: {why}",
                        spec.name
                    ),
                ));
            }
            Some(why) => fallback = Some(why),
        }
    }
    // Registered after CUDA, which keeps its place first.
    if spec.generate.is_some() {
        // A generation's tensors change size every step: ONNX Runtime's arena would keep
        // the largest sequence's memory for good. Without it they are freed as they go.
        ep::CPU::default()
            .with_arena_allocator(false)
            .register(&mut builder)
            .map_err(|e| load_failed(&spec, e))?;
    }
    let session = builder
        .commit_from_file(&path)
        .map_err(|e| load_failed(&spec, e))?;
    let generator = match &spec.generate {
        Some(g) => {
            check_outlets(
                &spec,
                "input",
                &crate::generate::inputs(g),
                session.inputs(),
            )?;
            check_outlets(
                &spec,
                "output",
                &crate::generate::outputs(g),
                session.outputs(),
            )?;
            Some(std::sync::Arc::new(crate::generate::Generator::load(
                &spec, g,
            )?))
        }
        None => {
            check_outlets(&spec, "input", &spec.inputs, session.inputs())?;
            check_outlets(&spec, "output", &spec.outputs, session.outputs())?;
            None
        }
    };
    Ok(Loaded {
        spec,
        session,
        generator,
        provider,
        fallback,
        load_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

fn invalid(message: String) -> Failure {
    Failure::new(ErrorCode::InvalidInput, message)
}

/// Check one request's inputs against the manifest; returns them in the model's order.
pub fn check_inputs(spec: &ModelSpec, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, Failure> {
    let mut by_name: Vec<Option<Tensor>> = vec![None; spec.inputs.len()];
    for t in inputs {
        let Some(i) = spec.inputs.iter().position(|s| s.name == t.name) else {
            return Err(invalid(format!(
                "model {:?} has no input {:?} (its inputs: {})",
                spec.name,
                t.name,
                spec.inputs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let s = &spec.inputs[i];
        if t.dtype != s.dtype {
            return Err(invalid(format!(
                "input {:?} of model {:?} must be {}, got {}",
                s.name,
                spec.name,
                s.dtype.name(),
                t.dtype.name()
            )));
        }
        let fits = t.shape.len() == s.shape.len()
            && t.shape
                .iter()
                .zip(&s.shape)
                .all(|(got, want)| *want < 0 || *got == *want as u64);
        if !fits || t.shape.contains(&0) {
            return Err(invalid(format!(
                "input {:?} of model {:?} must have shape {:?} (-1: any size, at least 1), got {:?}",
                s.name, spec.name, s.shape, t.shape
            )));
        }
        // The data's length was checked against the shape when the frame was read.
        by_name[i] = Some(t);
    }
    by_name
        .into_iter()
        .zip(&spec.inputs)
        .map(|(t, s)| {
            t.ok_or_else(|| {
                invalid(format!(
                    "input {:?} of model {:?} is missing",
                    s.name, spec.name
                ))
            })
        })
        .collect()
}

macro_rules! from_le {
    ($data:expr, $t:ty) => {
        $data
            .chunks_exact(std::mem::size_of::<$t>())
            .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk of the element's size")))
            .collect::<Vec<$t>>()
    };
}

fn to_value(t: &Tensor) -> ort::Result<DynValue> {
    let shape: Vec<i64> = t.shape.iter().map(|d| *d as i64).collect();
    Ok(match t.dtype {
        Dtype::Float32 => {
            ort::value::Tensor::from_array((shape, from_le!(t.data, f32)))?.into_dyn()
        }
        Dtype::Float64 => {
            ort::value::Tensor::from_array((shape, from_le!(t.data, f64)))?.into_dyn()
        }
        Dtype::Int32 => ort::value::Tensor::from_array((shape, from_le!(t.data, i32)))?.into_dyn(),
        Dtype::Int64 => ort::value::Tensor::from_array((shape, from_le!(t.data, i64)))?.into_dyn(),
        Dtype::Uint8 => ort::value::Tensor::from_array((shape, t.data.clone()))?.into_dyn(),
        Dtype::Bool => ort::value::Tensor::from_array((
            shape,
            t.data.iter().map(|b| *b != 0).collect::<Vec<bool>>(),
        ))?
        .into_dyn(),
    })
}

fn from_value(name: &str, dtype: Dtype, v: &DynValue) -> ort::Result<Tensor> {
    fn raw<T: ort::value::PrimitiveTensorElementType + Copy>(
        v: &DynValue,
        bytes: impl Fn(T) -> Vec<u8>,
    ) -> ort::Result<(Vec<u64>, Vec<u8>)> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        Ok((
            shape.iter().map(|d| *d as u64).collect(),
            data.iter().flat_map(|x| bytes(*x)).collect(),
        ))
    }
    let (shape, data) = match dtype {
        Dtype::Float32 => raw::<f32>(v, |x| x.to_le_bytes().to_vec())?,
        Dtype::Float64 => raw::<f64>(v, |x| x.to_le_bytes().to_vec())?,
        Dtype::Int32 => raw::<i32>(v, |x| x.to_le_bytes().to_vec())?,
        Dtype::Int64 => raw::<i64>(v, |x| x.to_le_bytes().to_vec())?,
        Dtype::Uint8 => raw::<u8>(v, |x| vec![x])?,
        Dtype::Bool => raw::<bool>(v, |x| vec![u8::from(x)])?,
    };
    Ok(Tensor {
        name: name.to_owned(),
        dtype,
        shape,
        data,
    })
}

impl Loaded {
    /// Run on inputs already checked with [`check_inputs`] (in the model's order).
    pub fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Failure> {
        let values: Vec<(String, DynValue)> = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), to_value(t)?)))
            .collect::<ort::Result<_>>()
            .map_err(|e| Failure::new(ErrorCode::InvalidInput, e.to_string()))?;
        let name = self.spec.name.clone();
        let outputs = self
            .session
            .run(values)
            .map_err(|e| Failure::new(ErrorCode::Failed, format!("model {name:?} failed: {e}")))?;
        self.spec
            .outputs
            .iter()
            .map(|o| {
                let v = outputs.get(&o.name).ok_or_else(|| {
                    Failure::new(
                        ErrorCode::Failed,
                        format!("model {name:?} gave no output {:?}", o.name),
                    )
                })?;
                from_value(&o.name, o.dtype, v)
                    .map_err(|e| Failure::new(ErrorCode::Failed, format!("model {name:?}: {e}")))
            })
            .collect()
    }
}
