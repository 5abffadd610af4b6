//! The filters' encode-data phase (Envoy's `encodeData`): once the response head has been
//! through the encode-headers phase, the filters that act on the response body see each
//! piece of it in their order, closest to the upstream first, each taking what the one
//! before it made. Only the filters that chose to act on this response take part, so a
//! response no filter touches costs nothing here (the forwarding loop sends its pieces as
//! they come). The compressor filters are the body's filters today; a local reply's body
//! goes through the same phase, whole.

use super::{compress, FilterHost};

/// A response head as the body's filters decide on it.
pub(crate) use compress::Head;

/// The encode-data phase of one response: at least one stage.
pub(crate) struct EncodeData {
    stages: Vec<Stage>,
}

/// One filter acting on the body.
enum Stage {
    Compress(Box<compress::Active>),
}

impl Stage {
    fn run(&mut self, input: &[u8], end: bool) -> Result<(), ()> {
        match self {
            Stage::Compress(c) => c.compress(input, end).map_err(|_| ()),
        }
    }

    fn out(&self) -> &[u8] {
        match self {
            Stage::Compress(c) => &c.out,
        }
    }

    fn sent(&mut self) {
        match self {
            Stage::Compress(c) => c.out.clear(),
        }
    }

    fn finished(&self) -> bool {
        match self {
            Stage::Compress(c) => c.finished(),
        }
    }
}

impl EncodeData {
    /// Runs a piece of the body (`end`: the last, possibly empty) through every stage:
    /// what goes to the client now (possibly nothing yet). `Err`: a filter failed, and
    /// the response cannot go on.
    pub(crate) fn data(&mut self, input: &[u8], end: bool) -> Result<&[u8], ()> {
        for k in 0..self.stages.len() {
            let (before, rest) = self.stages.split_at_mut(k);
            let piece = match before.last() {
                None => input,
                Some(prev) => prev.out(),
            };
            rest[0].run(piece, end)?;
        }
        for k in 0..self.stages.len().saturating_sub(1) {
            self.stages[k].sent();
        }
        Ok(self.stages.last().map_or(&[][..], Stage::out))
    }

    /// What [`EncodeData::data`] returned went out.
    pub(crate) fn sent(&mut self) {
        if let Some(last) = self.stages.last_mut() {
            last.sent();
        }
    }

    /// Every stage has seen the body's end.
    pub(crate) fn finished(&self) -> bool {
        self.stages.iter().all(Stage::finished)
    }
}

/// The encode phase on a response head (its headers' edits are kept in the filter
/// state for the head's writer): the data phase its body goes through, `None` when no
/// filter acts on the body.
pub(crate) fn begin<E: FilterHost + ?Sized>(
    x: &mut E,
    head: &Head<'_>,
    end: bool,
) -> Option<EncodeData> {
    let mut stages = Vec::new();
    if x.filter_state().compression.is_some() && compress::encode_head(x, head, end) {
        if let Some(a) = x.filter_state_mut().compression.as_mut()?.stream.take() {
            stages.push(Stage::Compress(a));
        }
    }
    (!stages.is_empty()).then_some(EncodeData { stages })
}

/// A local reply's body through the encode phase, whole: what the filters made of it,
/// or `None` when none acts on it (or one failed: the body then goes as it is, without
/// the edits that announced the change).
pub(crate) fn local_body<E: FilterHost + ?Sized>(
    x: &mut E,
    status: u16,
    body: &[u8],
    grpc: bool,
    head_request: bool,
) -> Option<Vec<u8>> {
    if !x.filter_state().encodes_body() {
        return None;
    }
    let content_type: Option<&[u8]> = if grpc {
        Some(b"application/grpc")
    } else if !body.is_empty() {
        Some(b"text/plain")
    } else {
        None
    };
    let head = Head {
        status,
        content_type,
        content_length: (status >= 200 && status != 204 && status != 304)
            .then_some(body.len() as u64),
        content_encoding: None,
        cache_control: None,
        etag: None,
        vary: None,
        upgrade: false,
    };
    let mut data = begin(x, &head, body.is_empty() || head_request)?;
    match data.data(body, true) {
        Ok(out) => Some(out.to_vec()),
        Err(()) => {
            compress::forget_head(x);
            None
        }
    }
}
