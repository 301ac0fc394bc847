//! The broker's wire format: length-prefixed binary frames.
//!
//! ```text
//! frame   = len:u32le kind:u8 payload        (len counts kind + payload, at most MAX_FRAME_BYTES)
//! string  = len:u32le utf8
//! tensor  = name:string dtype:u8 rank:u8 dims:u64le*rank nbytes:u64le bytes
//! ```
//!
//! A connection opens with `Hello` (magic + version) answered by `Welcome`; then each
//! request carries an id that its answer repeats. Tensors travel as raw little-endian
//! bytes: nothing is converted on either side.

use std::io::{self, Read, Write};

/// Protocol version; a broker refuses any other.
pub const PROTOCOL_VERSION: u16 = 1;
/// First bytes of a `Hello`, so that a stray client is told apart from an old one.
pub const MAGIC: [u8; 4] = *b"SPBK";
/// Largest frame either side sends or accepts (kind + payload).
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
/// Largest tensor rank accepted.
pub const MAX_RANK: usize = 8;

/// Element type of a tensor; the numbering is the wire's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE 754 single precision.
    Float32 = 1,
    /// IEEE 754 double precision.
    Float64 = 2,
    /// Signed 32-bit integer.
    Int32 = 3,
    /// Signed 64-bit integer.
    Int64 = 4,
    /// Unsigned byte.
    Uint8 = 5,
    /// One byte, 0 or 1.
    Bool = 6,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Float32 | Dtype::Int32 => 4,
            Dtype::Float64 | Dtype::Int64 => 8,
            Dtype::Uint8 | Dtype::Bool => 1,
        }
    }

    fn from_u8(v: u8) -> Option<Dtype> {
        Some(match v {
            1 => Dtype::Float32,
            2 => Dtype::Float64,
            3 => Dtype::Int32,
            4 => Dtype::Int64,
            5 => Dtype::Uint8,
            6 => Dtype::Bool,
            _ => return None,
        })
    }

    /// The name used in model manifests and messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Float32 => "float32",
            Dtype::Float64 => "float64",
            Dtype::Int32 => "int32",
            Dtype::Int64 => "int64",
            Dtype::Uint8 => "uint8",
            Dtype::Bool => "bool",
        }
    }
}

/// A dense tensor: raw little-endian bytes with their type and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The model's input or output name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// The elements, little-endian, row-major.
    pub data: Vec<u8>,
}

impl Tensor {
    /// Elements the shape holds, or None on overflow.
    pub fn elements(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
    }

    /// Check that the data is exactly the shape's size.
    pub fn check(&self) -> Result<(), String> {
        let expected = self
            .elements()
            .and_then(|n| n.checked_mul(self.dtype.size() as u64));
        match expected {
            Some(n) if n == self.data.len() as u64 => Ok(()),
            _ => Err(format!(
                "tensor {:?}: shape {:?} of {} needs {} bytes, got {}",
                self.name,
                self.shape,
                self.dtype.name(),
                expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                self.data.len()
            )),
        }
    }

    /// A float32 tensor from values.
    pub fn from_f32(name: &str, shape: Vec<u64>, values: &[f32]) -> Tensor {
        Tensor {
            name: name.to_owned(),
            dtype: Dtype::Float32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of a float32 tensor.
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        (self.dtype == Dtype::Float32).then(|| {
            self.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }
}

/// What went wrong, as the broker tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be read (bad kind, bad lengths, bad UTF-8).
    Malformed = 1,
    /// The client speaks another protocol version.
    Version = 2,
    /// A frame over [`MAX_FRAME_BYTES`].
    TooLarge = 3,
    /// No model by that name.
    UnknownModel = 4,
    /// Inputs do not match the model (names, dtype, rank, shape).
    InvalidInput = 5,
    /// The model could not be loaded (corrupt file, manifest that does not match it).
    LoadFailed = 6,
    /// The model requires a GPU and none can be used.
    GpuRequired = 7,
    /// ONNX Runtime failed while running it.
    Failed = 8,
    /// The broker is stopping.
    ShuttingDown = 9,
    /// The broker serves as many connections as it takes: try again later.
    Busy = 10,
    /// The connection comes from another user, whom this broker does not serve.
    Forbidden = 11,
    /// A chat's prompt does not fit the model's context.
    ContextTooLong = 12,
    /// A chat ran past the time its client gave it.
    Timeout = 13,
    /// A provider the chat needs, or a tool server, cannot be reached or started.
    Unreachable = 14,
    /// No tool server by that name in `tools.toml`.
    UnknownServer = 15,
}

impl ErrorCode {
    fn from_u8(v: u8) -> ErrorCode {
        match v {
            2 => ErrorCode::Version,
            3 => ErrorCode::TooLarge,
            4 => ErrorCode::UnknownModel,
            5 => ErrorCode::InvalidInput,
            6 => ErrorCode::LoadFailed,
            7 => ErrorCode::GpuRequired,
            8 => ErrorCode::Failed,
            9 => ErrorCode::ShuttingDown,
            10 => ErrorCode::Busy,
            11 => ErrorCode::Forbidden,
            12 => ErrorCode::ContextTooLong,
            13 => ErrorCode::Timeout,
            14 => ErrorCode::Unreachable,
            15 => ErrorCode::UnknownServer,
            _ => ErrorCode::Malformed,
        }
    }
}

/// One frame, either way.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Client -> broker, first: magic and version.
    Hello {
        /// [`PROTOCOL_VERSION`] of the client.
        version: u16,
    },
    /// Broker -> client: the handshake is accepted.
    Welcome {
        /// The broker's protocol version.
        version: u16,
    },
    /// Run `model` on `inputs`.
    Infer {
        /// Repeated in the answer.
        id: u64,
        /// The model's name in the repository.
        model: String,
        /// One tensor per model input.
        inputs: Vec<Tensor>,
    },
    /// The outputs of request `id`.
    Outputs {
        /// The request's id.
        id: u64,
        /// One tensor per model output.
        outputs: Vec<Tensor>,
    },
    /// The models in the repository (answered with `Json`).
    ListModels {
        /// Repeated in the answer.
        id: u64,
    },
    /// Providers, loaded models, queue depth, counts, latencies (answered with `Json`).
    Status {
        /// Repeated in the answer.
        id: u64,
    },
    /// A JSON answer to `ListModels` or `Status`.
    Json {
        /// The request's id.
        id: u64,
        /// The answer, a JSON document.
        json: String,
    },
    /// Generate a chat completion; the JSON is a [`crate::chat::ChatRequest`]. The broker
    /// answers with `Token` frames as the text comes, then `Json` (a
    /// [`crate::chat::Completion`]) or `Error`.
    Chat {
        /// Repeated in the answers.
        id: u64,
        /// The request, a JSON document.
        json: String,
    },
    /// The next piece of a chat's text (UTF-8, never a part of a character).
    Token {
        /// The chat's id.
        id: u64,
        /// The new text.
        text: String,
    },
    /// List or call tools of MCP servers; the JSON is a [`crate::tools::ToolRequest`].
    /// Answered with `Json` (a [`crate::tools::ToolList`] or [`crate::tools::ToolOutput`])
    /// or `Error`.
    Tools {
        /// Repeated in the answer.
        id: u64,
        /// The request, a JSON document.
        json: String,
    },
    /// Request `id` failed (id 0: the connection itself).
    Error {
        /// The request's id, 0 for the connection itself.
        id: u64,
        /// What kind of failure.
        code: ErrorCode,
        /// What happened and what to do, for a person.
        message: String,
    },
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A frame over [`MAX_FRAME_BYTES`] (it was skipped).
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge(u64),
    /// A frame that does not parse.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl WireError {
    /// The code a broker answers this with.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::TooLarge(_) => ErrorCode::TooLarge,
            _ => ErrorCode::Malformed,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_tensors(out: &mut Vec<u8>, tensors: &[Tensor]) {
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    for t in tensors {
        put_str(out, &t.name);
        out.push(t.dtype as u8);
        out.push(t.shape.len() as u8);
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&t.data);
    }
}

impl Frame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Frame::Hello { version } => {
                out.push(1);
                out.extend_from_slice(&MAGIC);
                out.extend_from_slice(&version.to_le_bytes());
            }
            Frame::Welcome { version } => {
                out.push(2);
                out.extend_from_slice(&version.to_le_bytes());
            }
            Frame::Infer { id, model, inputs } => {
                out.push(3);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(&mut out, model);
                put_tensors(&mut out, inputs);
            }
            Frame::Outputs { id, outputs } => {
                out.push(4);
                out.extend_from_slice(&id.to_le_bytes());
                put_tensors(&mut out, outputs);
            }
            Frame::ListModels { id } => {
                out.push(5);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Frame::Status { id } => {
                out.push(6);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Frame::Json { id, json } => {
                out.push(7);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(&mut out, json);
            }
            Frame::Error { id, code, message } => {
                out.push(8);
                out.extend_from_slice(&id.to_le_bytes());
                out.push(*code as u8);
                put_str(&mut out, message);
            }
            Frame::Chat { id, json } => {
                out.push(9);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(&mut out, json);
            }
            Frame::Token { id, text } => {
                out.push(10);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(&mut out, text);
            }
            Frame::Tools { id, json } => {
                out.push(11);
                out.extend_from_slice(&id.to_le_bytes());
                put_str(&mut out, json);
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// Write the frame; fails without writing when it is over [`MAX_FRAME_BYTES`].
    pub fn write_to(&self, w: &mut impl Write) -> Result<(), WireError> {
        let bytes = self.encode();
        let len = bytes.len() as u64 - 4;
        if len > u64::from(MAX_FRAME_BYTES) {
            return Err(WireError::TooLarge(len));
        }
        w.write_all(&bytes)?;
        w.flush()?;
        Ok(())
    }

    /// Read one frame. An over-long frame is skipped (read and dropped) before the error
    /// is returned, so the connection stays in step and can answer it.
    pub fn read_from(r: &mut impl Read) -> Result<Frame, WireError> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME_BYTES {
            io::copy(&mut r.take(u64::from(len)), &mut io::sink())?;
            return Err(WireError::TooLarge(u64::from(len)));
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        Frame::decode(&body)
    }

    fn decode(body: &[u8]) -> Result<Frame, WireError> {
        let mut c = Cursor { bytes: body, at: 0 };
        let frame = match c.u8()? {
            1 => {
                if c.take(4)? != MAGIC {
                    return Err(WireError::Malformed("not a broker hello".into()));
                }
                Frame::Hello { version: c.u16()? }
            }
            2 => Frame::Welcome { version: c.u16()? },
            3 => Frame::Infer {
                id: c.u64()?,
                model: c.string()?,
                inputs: c.tensors()?,
            },
            4 => Frame::Outputs {
                id: c.u64()?,
                outputs: c.tensors()?,
            },
            5 => Frame::ListModels { id: c.u64()? },
            6 => Frame::Status { id: c.u64()? },
            7 => Frame::Json {
                id: c.u64()?,
                json: c.string()?,
            },
            8 => Frame::Error {
                id: c.u64()?,
                code: ErrorCode::from_u8(c.u8()?),
                message: c.string()?,
            },
            9 => Frame::Chat {
                id: c.u64()?,
                json: c.string()?,
            },
            10 => Frame::Token {
                id: c.u64()?,
                text: c.string()?,
            },
            11 => Frame::Tools {
                id: c.u64()?,
                json: c.string()?,
            },
            kind => return Err(WireError::Malformed(format!("unknown frame kind {kind}"))),
        };
        if c.at != body.len() {
            return Err(WireError::Malformed(format!(
                "{} bytes after the frame's end",
                body.len() - c.at
            )));
        }
        Ok(frame)
    }
}

/// Reads the parts of a frame body, failing on anything short or out of range.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| WireError::Malformed("frame ends early".into()))?;
        let part = &self.bytes[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| WireError::Malformed("a string is not UTF-8".into()))
    }

    fn tensors(&mut self) -> Result<Vec<Tensor>, WireError> {
        let count = self.u32()? as usize;
        // Each tensor takes at least 14 bytes: a bound before allocating.
        if count > self.bytes.len() / 14 {
            return Err(WireError::Malformed(format!("{count} tensors cannot fit")));
        }
        let mut tensors = Vec::with_capacity(count);
        for _ in 0..count {
            let name = self.string()?;
            let dtype = self.u8()?;
            let dtype = Dtype::from_u8(dtype)
                .ok_or_else(|| WireError::Malformed(format!("unknown dtype {dtype}")))?;
            let rank = self.u8()? as usize;
            if rank > MAX_RANK {
                return Err(WireError::Malformed(format!(
                    "rank {rank} is over the limit of {MAX_RANK}"
                )));
            }
            let shape = (0..rank).map(|_| self.u64()).collect::<Result<_, _>>()?;
            let len = usize::try_from(self.u64()?)
                .map_err(|_| WireError::Malformed("tensor too large".into()))?;
            let data = self.take(len)?.to_vec();
            let tensor = Tensor {
                name,
                dtype,
                shape,
                data,
            };
            tensor.check().map_err(WireError::Malformed)?;
            tensors.push(tensor);
        }
        Ok(tensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame) {
        let bytes = frame.encode();
        let back = Frame::read_from(&mut &bytes[..]).expect("decodes");
        assert_eq!(back, frame);
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Hello {
            version: PROTOCOL_VERSION,
        });
        round_trip(Frame::Infer {
            id: 7,
            model: "scorer".into(),
            inputs: vec![Tensor::from_f32("x", vec![2, 2], &[1.0, 2.0, 3.0, 4.5])],
        });
        round_trip(Frame::Chat {
            id: 4,
            json: r#"{"model":"m","messages":[]}"#.into(),
        });
        round_trip(Frame::Tools {
            id: 12,
            json: "{\"op\":\"list\",\"servers\":[\"时间\"]}".into(),
        });
        round_trip(Frame::Token {
            id: 4,
            text: "naïve 日本 🎉".into(),
        });
        round_trip(Frame::Error {
            id: 3,
            code: ErrorCode::InvalidInput,
            message: "bad".into(),
        });
    }

    #[test]
    fn bad_frames_are_refused() {
        // Truncated.
        let bytes = Frame::ListModels { id: 1 }.encode();
        assert!(Frame::read_from(&mut &bytes[..bytes.len() - 1]).is_err());
        // Data that does not match the shape.
        let mut t = Tensor::from_f32("x", vec![3], &[1.0, 2.0, 3.0]);
        t.data.pop();
        let bytes = Frame::Outputs {
            id: 1,
            outputs: vec![t],
        }
        .encode();
        let err = Frame::read_from(&mut &bytes[..]).expect_err("refused");
        assert!(err.to_string().contains("needs 12 bytes, got 11"), "{err}");
        // Over the limit: skipped, then reported.
        let mut big = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
        big.resize(4 + MAX_FRAME_BYTES as usize + 1, 0);
        big.extend_from_slice(&Frame::Status { id: 9 }.encode());
        let mut r = &big[..];
        assert!(matches!(
            Frame::read_from(&mut r),
            Err(WireError::TooLarge(_))
        ));
        assert_eq!(
            Frame::read_from(&mut r).expect("next"),
            Frame::Status { id: 9 }
        );
    }
}
