//! Every method and notification: its wire name, and the Rust types of its params and result.
//!
//! The [`Method`] and [`NotificationMethod`] traits tie a name to its types, so a client writes
//! `client.call::<methods::Confirm>(params)` and gets a `DecisionResult` back, and the server
//! dispatches on [`Method::NAME`] and parses with [`Method::Params`]. The names live only here
//! (module [`names`]).
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::*;

/// Wire names of every method and notification.
pub mod names {
    pub const INITIALIZE: &str = "initialize";
    pub const INITIALIZED: &str = "initialized";
    pub const SHUTDOWN: &str = "shutdown";
    pub const EXIT: &str = "exit";
    pub const CANCEL_REQUEST: &str = "$/cancelRequest";

    pub const STATUS: &str = "sotalign/status";
    pub const LIST_SAMPLES: &str = "sotalign/listSamples";
    pub const GET_SAMPLE: &str = "sotalign/getSample";
    pub const SUGGEST_FOR_SAMPLE: &str = "sotalign/suggestForSample";
    pub const SUGGEST_PAIRS: &str = "sotalign/suggestPairs";
    pub const CONFIRM: &str = "sotalign/confirm";
    pub const REJECT: &str = "sotalign/reject";
    pub const UNDO: &str = "sotalign/undo";
    pub const LIST_PAIRS: &str = "sotalign/listPairs";
    pub const SEARCH: &str = "sotalign/search";
    pub const ALIGN: &str = "sotalign/align";
    pub const CANCEL: &str = "sotalign/cancel";
    pub const JOBS: &str = "sotalign/jobs";
    pub const EVALUATE: &str = "sotalign/evaluate";
    pub const RUNS: &str = "sotalign/runs";
    pub const INGEST: &str = "sotalign/ingest";
    pub const NEXT_TO_LABEL: &str = "sotalign/nextToLabel";
    pub const EXPORT: &str = "sotalign/export";
    pub const GET_IMAGE: &str = "sotalign/getImage";
    pub const AUDIT: &str = "sotalign/audit";

    pub const PROGRESS: &str = "$/progress";
    pub const JOB_FINISHED: &str = "sotalign/jobFinished";
    pub const DECISIONS_CHANGED: &str = "sotalign/decisionsChanged";
}

/// A request/response method.
pub trait Method {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned;
    type Result: Serialize + DeserializeOwned;
}

/// A one-way notification (either direction).
pub trait NotificationMethod {
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned;
}

macro_rules! methods {
    ($($(#[$doc:meta])* $ty:ident = $name:ident: $params:ty => $result:ty;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub enum $ty {}
            impl Method for $ty {
                const NAME: &'static str = names::$name;
                type Params = $params;
                type Result = $result;
            }
        )*
        /// Every request method the daemon serves, lifecycle included.
        pub const ALL_METHODS: &[&str] = &[$(names::$name),*];
    };
}

macro_rules! notifications {
    ($($(#[$doc:meta])* $ty:ident = $name:ident: $params:ty;)*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub enum $ty {}
            impl NotificationMethod for $ty {
                const NAME: &'static str = names::$name;
                type Params = $params;
            }
        )*
        /// Every notification in the protocol (client -> server and server -> client).
        pub const ALL_NOTIFICATIONS: &[&str] = &[$(names::$name),*];
    };
}

methods! {
    /// LSP handshake; must be the first request. Checks the auth token.
    Initialize = INITIALIZE: InitializeParams => InitializeResult;
    /// LSP: stop accepting work, flush state; answered `null`. Then send `exit`.
    Shutdown = SHUTDOWN: () => ();
    /// Counts, model, index and running jobs.
    Status = STATUS: Empty => StatusResult;
    /// Page through images or texts by state and filter.
    ListSamples = LIST_SAMPLES: ListSamplesParams => ListSamplesResult;
    /// One sample with its image path or caption and its pairs.
    GetSample = GET_SAMPLE: GetSampleParams => GetSampleResult;
    /// Top-k cross-modal candidates for one sample.
    SuggestForSample = SUGGEST_FOR_SAMPLE: SuggestForSampleParams => SuggestForSampleResult;
    /// The most promising unconfirmed pairs overall, by an acquisition strategy.
    SuggestPairs = SUGGEST_PAIRS: SuggestPairsParams => SuggestPairsResult;
    /// Record that an image and a text match (durable before the answer).
    Confirm = CONFIRM: DecideParams => DecisionResult;
    /// Record that an image and a text do not match (kept as a negative).
    Reject = REJECT: DecideParams => DecisionResult;
    /// Revert a decision.
    Undo = UNDO: UndoParams => UndoResult;
    /// Page through pairs by state, newest first.
    ListPairs = LIST_PAIRS: ListPairsParams => ListPairsResult;
    /// Free text -> images, sample -> other modality, raw vector -> either.
    Search = SEARCH: SearchParams => SearchResult;
    /// Start a background alignment job (teacher, then refinement, then index rebuild).
    Align = ALIGN: AlignParams => AlignResult;
    /// Ask a job to stop at its next step.
    Cancel = CANCEL: CancelParams => CancelResult;
    /// Running (and optionally finished) jobs.
    Jobs = JOBS: JobsParams => JobsResult;
    /// R@1/5/10 in both directions on the held-out pairs.
    Evaluate = EVALUATE: EvaluateParams => EvaluateResult;
    /// Past alignment runs with their metrics, oldest first.
    Runs = RUNS: RunsParams => RunsResult;
    /// Add samples from a manifest, folders or inline embeddings; encodes in the background.
    Ingest = INGEST: IngestParams => IngestResult;
    /// What to label next, each image with the reason it is queued.
    NextToLabel = NEXT_TO_LABEL: NextToLabelParams => NextToLabelResult;
    /// Write the decided pairs (with who decided and when) as JSONL, CSV, imagefolder or
    /// WebDataset shards on the daemon's machine.
    Export = EXPORT: ExportParams => ExportResult;
    /// An image sample downscaled to fit a box, as base64 PNG (for clients that cannot read
    /// the daemon's paths, e.g. over an SSH tunnel).
    GetImage = GET_IMAGE: GetImageParams => GetImageResult;
    /// The confirmed pairs that look most wrong (cross-fitted), with the suggested partners.
    Audit = AUDIT: AuditParams => AuditResult;
}

notifications! {
    /// Client -> server, after the `initialize` response.
    Initialized = INITIALIZED: InitializedParams;
    /// Client -> server, after `shutdown`: the daemon closes this connection (stdio: exits).
    Exit = EXIT: ();
    /// Server -> client: job progress, with a per-job sequence number.
    Progress = PROGRESS: ProgressParams;
    /// Server -> client: a job ended; sent once, after its last progress notification.
    JobFinished = JOB_FINISHED: JobFinishedParams;
    /// Server -> client: a decision or undo committed (any connection's).
    DecisionsChanged = DECISIONS_CHANGED: DecisionsChangedParams;
}

/// A server -> client notification, typed. Clients match on this instead of method strings.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerNotification {
    Progress(ProgressParams),
    JobFinished(JobFinishedParams),
    DecisionsChanged(DecisionsChangedParams),
    /// Anything else (e.g. `window/logMessage`), kept raw.
    Other(crate::jsonrpc::Notification),
}

impl ServerNotification {
    /// Type a notification; a known method with malformed params is an error (a server bug
    /// worth showing), an unknown method is `Other`.
    pub fn parse(n: crate::jsonrpc::Notification) -> Result<Self, crate::jsonrpc::ErrorObject> {
        Ok(match n.method.as_str() {
            names::PROGRESS => ServerNotification::Progress(n.parse_params()?),
            names::JOB_FINISHED => ServerNotification::JobFinished(n.parse_params()?),
            names::DECISIONS_CHANGED => ServerNotification::DecisionsChanged(n.parse_params()?),
            _ => ServerNotification::Other(n),
        })
    }
}
