//! Parameters and results of every method, and the payloads of server notifications.
//!
//! Wire conventions: field names are camelCase (as in LSP), enum values snake_case, ids are
//! unsigned integers, times are Unix milliseconds (`...AtMs`), durations seconds (`...Secs`),
//! scores are cosine similarities in the aligned space unless said otherwise. Optional fields
//! may be omitted; unknown fields are ignored (so older clients keep working when fields are
//! added; incompatible changes bump [`crate::PROTOCOL_VERSION`]).
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::vector::Vector;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A sample (one image or one text); unique across both modalities.
    SampleId
);
id_type!(
    /// One curation decision (confirm or reject); undo refers to it.
    DecisionId
);
id_type!(
    /// A background job (alignment or ingest).
    JobId
);
id_type!(
    /// One alignment run: its config, the pairs it used, its metrics and its checkpoint.
    RunId
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    Image,
    Text,
}

impl Modality {
    pub fn other(self) -> Self {
        match self {
            Modality::Image => Modality::Text,
            Modality::Text => Modality::Image,
        }
    }
}

/// Where a sample stands in curation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleState {
    /// No confirmed pair yet: what the review queue shows.
    Unpaired,
    /// Part of at least one confirmed (or seed) pair: used for training.
    Paired,
    /// Part of a held-out evaluation pair: never suggested, never trained on.
    HeldOut,
}

/// The state of an (image, text) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairState {
    /// Known to match: seed pairs from a manifest, or confirmed by a person. Trained on.
    Confirmed,
    /// Known not to match; kept as a negative and never suggested again.
    Rejected,
    /// Known to match but reserved for evaluation.
    HeldOut,
}

/// A decision's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Confirm,
    Reject,
}

/// How global suggestions are chosen (issue 6's acquisition strategies; the daemon runs the
/// engine's one implementation, `align::acquire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Uniformly random unpaired image with a random unpaired text: the baseline.
    Random,
    /// Largest margin between the best and second-best cross-modal similarity.
    Confidence,
    /// Pairs that are each other's nearest neighbour in both directions, by similarity (then
    /// the confidence ranking when they run out).
    MutualNn,
    /// Largest mass in the entropic OT plan between unpaired images and texts.
    OtMass,
    /// `ot_mass`, skipping candidates too similar to ones already chosen or confirmed.
    Diverse,
    /// Mutual nearest neighbours first, then the rest, each group by OT plan mass.
    #[default]
    MnnOt,
}

/// The alignment method an align job fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AlignMethod {
    /// CCA teacher, then student heads with SigLIP + KLOT on unpaired data.
    #[default]
    Sotalign,
    /// The ridge-CCA teacher alone.
    Cca,
    Procrustes,
    /// Correlation-weighted CCA.
    Csa,
    /// Relative representations against the paired anchors.
    Asif,
    /// Student heads trained on the pairs only (alpha = 0).
    Siglip,
    /// ASIF on features centred on the paired means.
    AsifC,
    /// Chosen by validation on the confirmed pairs only: the best of three score fusions of
    /// the method families (CCA + centred ASIF, + Procrustes, + plain ASIF). The strongest
    /// method on the reference splits at every pair budget (docs/RESULTS.md).
    Auto,
}

// ---------------------------------------------------------------------------------------------
// Lifecycle

/// `initialize` params: the subset of LSP's `InitializeParams` sotalign reads. Generic LSP
/// clients send more; it is ignored.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    /// LSP requires the member; `null` when the client has no process id to give.
    #[serde(default)]
    pub process_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_info: Option<ClientInfo>,
    /// LSP client capabilities; sotalign ignores them but LSP requires the member.
    #[serde(default = "empty_object")]
    pub capabilities: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialization_options: Option<InitializationOptions>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializationOptions {
    /// Required when the daemon was started with `--token` (any non-loopback listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeResult {
    /// LSP server capabilities. sotalign's own live under `experimental.sotalign`
    /// ([`SotalignCapabilities`]); read them with [`InitializeResult::sotalign`].
    pub capabilities: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_info: Option<ServerInfo>,
}

impl InitializeResult {
    pub fn sotalign(&self) -> Option<SotalignCapabilities> {
        let v = self.capabilities.get("experimental")?.get("sotalign")?;
        SotalignCapabilities::deserialize(v).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// What the daemon tells clients about itself at `initialize`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SotalignCapabilities {
    /// [`crate::PROTOCOL_VERSION`] of the server.
    pub protocol_version: u32,
    /// Every method the server serves.
    pub methods: Vec<String>,
    /// The server's frame body cap in bytes.
    pub max_body_bytes: u64,
}

/// `initialized` params: empty, as in LSP.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InitializedParams {}

/// Params of methods that take none; serialises as `{}`, and absent params are accepted.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Empty {}

// ---------------------------------------------------------------------------------------------
// Status

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusResult {
    /// Daemon version (the `sotalign` crate version).
    pub version: String,
    pub protocol_version: u32,
    pub data_dir: String,
    /// `cpu` or `cuda:N`.
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_encoder: Option<EncoderInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<EncoderInfo>,
    pub counts: Counts,
    /// The model queries are served from; absent before the first alignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
    pub index: IndexInfo,
    /// Jobs queued or running now.
    pub jobs: Vec<JobInfo>,
    /// Decisions per annotator (undone ones not counted), most active first.
    #[serde(default)]
    pub annotators: Vec<AnnotatorCount>,
    /// The store's decision revision: bumped by every committed decision and undo. A client
    /// passes the revision it showed a pair at as `DecideParams::shownRevision`.
    #[serde(default)]
    pub revision: u64,
}

/// How many standing decisions one annotator made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnotatorCount {
    pub annotator: String,
    pub confirmed: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderInfo {
    pub name: String,
    pub dim: u32,
}

/// The numbers a dashboard shows; returned by status and by every decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub images: u64,
    pub texts: u64,
    pub unpaired_images: u64,
    pub unpaired_texts: u64,
    /// Pairs in state `confirmed` (seed pairs included).
    pub confirmed_pairs: u64,
    pub rejected_pairs: u64,
    pub held_out_pairs: u64,
    /// Samples whose embeddings are not computed yet (ingest in progress).
    pub pending_encoding: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub run: RunId,
    pub method: AlignMethod,
    /// Dimension of the shared space.
    pub dim: u32,
    /// Confirmed pairs the model was trained on.
    pub pairs: u64,
    pub trained_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RetrievalMetrics>,
    /// What the engine actually fitted when it differs from `method` or needs saying, e.g.
    /// `cca (teacher only: trained heads unavailable)`; absent in older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted: Option<String>,
    /// Which of its alignment's models this is (`closed_form` first, `trained` later); absent
    /// in older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<ModelStage>,
}

/// "Fast first, better later": an alignment of a trained method (`sotalign`, `siglip`) serves
/// two models one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStage {
    /// A closed-form model (`auto`'s choice), served within seconds of the request. Closed-form
    /// methods (`cca`, `auto`, ...) serve only this stage.
    ClosedForm,
    /// The trained student heads, swapped in only when validation on the confirmed pairs says
    /// they beat the closed-form model.
    Trained,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexKind {
    /// Exact search by matrix product (small collections).
    Exact,
    /// hnsw_rs approximate search.
    Hnsw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    /// No model yet, so nothing to index.
    Empty,
    /// Serving queries.
    Ready,
    /// Serving queries from the previous index while a new one is built.
    Rebuilding,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexInfo {
    pub state: IndexState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<IndexKind>,
    pub images: u64,
    pub texts: u64,
    /// The run whose embeddings are indexed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// While `rebuilding` a model restored at start (no model served yet): the fraction done,
    /// 0..1 (checkpoint read, then samples embedded and indexed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
}

// ---------------------------------------------------------------------------------------------
// Samples

/// One image or text as clients display it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    pub id: SampleId,
    pub modality: Modality,
    /// The manifest's name for it (file stem, caption id).
    pub key: String,
    pub state: SampleState,
    /// Image samples: the absolute path of the image file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Text samples: the caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// False until the encoder has embedded it.
    pub encoded: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSamplesParams {
    pub modality: Modality,
    /// Only samples in this state; all states when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SampleState>,
    /// Case-insensitive substring of the key, path or caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Samples are listed by ascending id; skip this many.
    #[serde(default)]
    pub offset: u64,
    /// At most this many (default 50, capped at 1000).
    #[serde(default = "default_page")]
    pub limit: u32,
}

fn default_page() -> u32 {
    50
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListSamplesResult {
    pub items: Vec<Sample>,
    /// Matching samples in total (for "page x of y").
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetSampleParams {
    pub id: SampleId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetSampleResult {
    pub sample: Sample,
    /// Every pair (any state) this sample takes part in.
    pub pairs: Vec<Pair>,
}

// ---------------------------------------------------------------------------------------------
// Suggestions and search

/// A sample proposed as a partner, with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    pub sample: Sample,
    /// Cosine similarity in the aligned space.
    pub score: f64,
    /// 1-based rank in this list.
    pub rank: u32,
    /// True when the query sample is also this candidate's nearest neighbour.
    pub mutual_nn: bool,
    /// How many OTHER samples carry exactly this caption (text candidates only): the daemon
    /// lists each distinct caption once, and a decision on it applies to the whole group.
    /// 0, the default, is left off the wire, so older peers read and write it unchanged.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub duplicates: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestForSampleParams {
    pub sample: SampleId,
    /// How many candidates (default 10, capped at 100).
    #[serde(default = "default_k")]
    pub k: u32,
    /// Include partners already rejected for this sample (default false).
    #[serde(default)]
    pub include_rejected: bool,
}

fn default_k() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestForSampleResult {
    pub sample: Sample,
    pub candidates: Vec<Candidate>,
    /// The model that scored them.
    pub run: RunId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestPairsParams {
    #[serde(default)]
    pub strategy: Strategy,
    /// How many pairs (default 20, capped at 1000).
    #[serde(default = "default_pairs")]
    pub limit: u32,
    /// Seed for `random` (and tie-breaking), so a run can be reproduced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn default_pairs() -> u32 {
    20
}

/// A proposed (image, text) pair between two unpaired samples, never a rejected one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairSuggestion {
    pub image: Sample,
    pub text: Sample,
    /// Cosine similarity in the aligned space.
    pub score: f64,
    /// The strategy's ranking key (margin, plan mass, ...; higher first).
    pub priority: f64,
    pub mutual_nn: bool,
    /// The pair's mass in the OT plan, scaled by the number of samples (1 = a full match);
    /// present for `ot_mass`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ot_mass: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SuggestPairsResult {
    pub strategy: Strategy,
    pub run: RunId,
    pub suggestions: Vec<PairSuggestion>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NextToLabelParams {
    /// How many items (default 20, capped at 200).
    #[serde(default = "default_pairs")]
    pub limit: u32,
}

/// Why an image is in the labelling queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueReason {
    /// Cold start (no model yet): the most typical image of a cluster of the image encoder's
    /// space that no confirmed pair covers yet. Find its caption.
    UncoveredCluster,
    /// The model is right often enough: judge its proposal (yes/no on `proposal`).
    JudgeProposal,
    /// The model is not yet right often enough: find this image's caption (the candidates of
    /// `sotalign/suggestForSample`, or a search).
    FindCaption,
}

/// How the queue was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueMode {
    /// No model: typical images of uncovered clusters in the image encoder's space.
    ColdStart,
    /// Finding captions for chosen images (precision estimate below the threshold).
    Caption,
    /// Judging the model's mutual-nearest-neighbour proposals.
    Judge,
}

/// One image to label next, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueItem {
    pub image: Sample,
    pub reason: QueueReason,
    /// The reason in words, for display (e.g. "typical of cluster 3 of 40, which no pair covers").
    pub why: String,
    /// `judge_proposal`: the caption the model proposes for this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NextToLabelResult {
    pub mode: QueueMode,
    /// Smoothed precision of the model's proposals, estimated only from the annotator's own
    /// decisions since the daemon started ((hits + 1) / (n + 2) over the last 40).
    pub precision: f64,
    /// Decisions the estimate rests on.
    pub observations: u32,
    /// The estimate at which the queue switches from captioning to judging.
    pub threshold: f64,
    /// The model that built the queue (absent at cold start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    pub items: Vec<QueueItem>,
}

/// What to search with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SearchQuery {
    /// Free text, encoded with the text encoder.
    Text(String),
    /// An existing sample's embedding.
    Sample(SampleId),
    /// A raw encoder-space embedding of the given modality (checked for dimension and
    /// finiteness).
    Vector { modality: Modality, values: Vector },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchParams {
    pub query: SearchQuery,
    /// Modality to return; default: the other one (text -> images, image -> texts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Modality>,
    #[serde(default = "default_k")]
    pub k: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SearchResult {
    /// Free-text queries: the samples whose caption or file name contains every word of the
    /// query come first (ranked by the model's score), then the best matches by meaning.
    pub hits: Vec<Candidate>,
    pub run: RunId,
    pub index: IndexKind,
}

// ---------------------------------------------------------------------------------------------
// Decisions and pairs

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecideParams {
    pub image: SampleId,
    pub text: SampleId,
    /// Who decided (e.g. `tui:alice`); default: the client name given at `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The person who decided (the TUI's `--annotator`, default the login name); stored with
    /// the decision and counted per annotator in `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotator: Option<String>,
    /// The store revision (`status.revision` / `decisionsChanged.revision`) at which the client
    /// showed this pair. If a decision or undo touching either sample committed after it, the
    /// decision is refused with `STALE_DECISION` and nothing is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_revision: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub id: DecisionId,
    pub kind: DecisionKind,
    pub image: SampleId,
    pub text: SampleId,
    pub at_ms: u64,
    pub source: String,
    /// The person who decided, when the client named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotator: Option<String>,
    /// Set once the decision was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone_at_ms: Option<u64>,
}

/// Returned once the decision is durably stored (fsynced): an acknowledged decision survives
/// a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionResult {
    pub decision: Decision,
    /// False when the pair already had this state (the call changed nothing).
    pub changed: bool,
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoParams {
    /// The decision to undo; default: the most recent decision not yet undone (any client).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoResult {
    /// The decision, now with `undoneAtMs` set.
    pub undone: Decision,
    pub counts: Counts,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pair {
    pub image: SampleId,
    pub text: SampleId,
    pub state: PairState,
    /// The decision that set the state; absent for pairs that came with the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionId>,
    /// `manifest` for pairs that came with the data, else the decision's source.
    pub source: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPairsParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PairState>,
    /// Pairs are listed newest first; skip this many.
    #[serde(default)]
    pub offset: u64,
    #[serde(default = "default_page")]
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPairsResult {
    pub items: Vec<Pair>,
    pub total: u64,
}

// ---------------------------------------------------------------------------------------------
// Jobs

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Align,
    Ingest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    /// Cancel requested; the job stops at its next step boundary.
    Cancelling,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// The phase a job is in; each has its own `step`/`total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStage {
    /// Ingest: reading the manifest or folders.
    Scan,
    /// Ingest: computing embeddings.
    Encode,
    /// Align: fitting a closed-form model (the linear teacher, or `auto`'s refit of its choice).
    Teacher,
    /// Align: training the student heads (SigLIP + KLOT).
    Refine,
    /// Align: scoring the held-out pairs.
    Evaluate,
    /// Align: rebuilding the search index.
    Index,
    /// Align: validation on the confirmed pairs (`auto` choosing among its candidates, or the
    /// trained heads compared with the closed-form model before they may replace it).
    Validate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobInfo {
    pub id: JobId,
    pub kind: JobKind,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<JobStage>,
    /// Align jobs: which model the job is working towards (see [`ModelStage`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_stage: Option<ModelStage>,
    pub step: u64,
    pub total: u64,
    /// Sequence number of the last progress notification sent for this job (0: none yet).
    pub last_seq: u64,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// The run an align job produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlignParams {
    #[serde(default)]
    pub method: AlignMethod,
    /// A named preset of the engine's configuration (e.g. `reference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Overrides merged into the configuration (same shape as the engine's `AlignConfig`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlignResult {
    pub job: JobId,
    /// The run the job will record; `sotalign/evaluate` and `sotalign/runs` refer to it.
    pub run: RunId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelParams {
    pub job: JobId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelResult {
    /// The job after the request: `cancelling`, or already finished (cancel is then a no-op).
    pub job: JobInfo,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobsParams {
    /// Also list finished jobs (newest first); default false.
    #[serde(default)]
    pub include_finished: bool,
    #[serde(default = "default_page")]
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsResult {
    pub jobs: Vec<JobInfo>,
}

// ---------------------------------------------------------------------------------------------
// Evaluation and runs

/// Recall@k in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Recall {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetrievalMetrics {
    /// Image query, text gallery.
    pub image_to_text: Recall,
    /// Text query, image gallery.
    pub text_to_image: Recall,
    /// Held-out pairs scored (gallery size).
    pub pairs: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateParams {
    /// The run to evaluate; default: the model now serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateResult {
    pub run: RunId,
    pub metrics: RetrievalMetrics,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunsParams {
    #[serde(default = "default_page")]
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInfo {
    pub id: RunId,
    pub method: AlignMethod,
    pub state: JobState,
    /// Confirmed pairs the run trained on: the x axis of "curation pays off".
    pub pairs: u64,
    pub started_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RetrievalMetrics>,
    /// What the engine actually fitted (see [`ModelInfo::fitted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted: Option<String>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunsResult {
    /// Oldest first, so a chart can plot them in order.
    pub runs: Vec<RunInfo>,
}

// ---------------------------------------------------------------------------------------------
// Ingest

/// One sample given inline with its encoder-space embedding (already encoded elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedSample {
    pub modality: Modality,
    pub key: String,
    pub vector: Vector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IngestSource {
    /// A manifest file on the daemon's machine (format: the daemon's docs).
    Manifest(String),
    /// A folder of images (recursive) and/or a caption file (one caption per line), on the
    /// daemon's machine; stored unpaired and encoded by the daemon's encoders.
    Folders {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        images: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        texts: Option<String>,
    },
    /// Samples with their embeddings, validated before the call returns.
    Embedded(Vec<EmbeddedSample>),
    /// A Hugging Face `imagefolder` directory: images plus `metadata.jsonl` with `file_name`
    /// and a caption column (`text`, `caption`); rows without a caption are unpaired images.
    Imagefolder(String),
    /// A CSV table (header row: `image`/`image_path`/`file_name`, `caption`/`text`, optional
    /// `key`, `split`); an empty cell leaves that side out (unpaired).
    Csv(String),
    /// A parquet table with the same columns as `csv`.
    Parquet(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestParams {
    pub source: IngestSource,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngestResult {
    pub job: JobId,
    /// Samples accepted so far (inline samples: all of them; files: counted by the job).
    pub accepted: u64,
}

// ---------------------------------------------------------------------------------------------
// Export

/// What `sotalign/export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A sotalign manifest (version 1), re-ingestable as is.
    Jsonl,
    /// One row per pair with a header.
    Csv,
    /// A Hugging Face `imagefolder` directory (`metadata.jsonl` + the images).
    Imagefolder,
    /// WebDataset tar shards: `KEY.png|jpg` + `KEY.txt` + `KEY.json`.
    Webdataset,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportParams {
    pub format: ExportFormat,
    /// Where to write, on the daemon's machine: a file (`jsonl`, `csv`) or a directory
    /// (`imagefolder`, `webdataset`) that must not exist yet or be empty.
    pub dest: String,
    /// Rejected pairs too (marked `"state": "rejected"`); default: confirmed only.
    #[serde(default)]
    pub include_rejected: bool,
    /// WebDataset: pairs per shard (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_size: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportResult {
    /// Pairs written.
    pub pairs: u64,
    /// Files written (the manifest, the table, each shard, each image).
    pub files: u64,
    pub dest: String,
}

// ---------------------------------------------------------------------------------------------
// Pictures over the wire

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetImageParams {
    /// The image sample; or give `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<SampleId>,
    /// The stored path of an image sample (as `getSample` / `listSamples` return it); only
    /// paths of stored samples are served, never arbitrary files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Bounding box in pixels; the image is downscaled to fit (never upscaled), capped at 1024.
    pub max_width: u32,
    pub max_height: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetImageResult {
    /// `image/png`.
    pub mime: String,
    pub width: u32,
    pub height: u32,
    /// The encoded image, base64 (standard alphabet, padded).
    pub data: String,
}

// ---------------------------------------------------------------------------------------------
// Notifications

/// `sotalign/decisionsChanged`: broadcast to every connection after a decision or undo
/// committed, so several annotators see each other's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionsChangedParams {
    /// The store revision after this change.
    pub revision: u64,
    pub decision: Decision,
    /// True when the change was an undo of `decision`.
    pub undone: bool,
    pub counts: Counts,
}

/// `$/progress` token: LSP allows an integer or a string; sotalign sends `"job-<id>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProgressToken {
    Number(i64),
    String(String),
}

impl ProgressToken {
    pub fn for_job(job: JobId) -> Self {
        ProgressToken::String(format!("job-{job}"))
    }
}

/// `$/progress` params, shaped like LSP work-done progress (`value.kind` begin/report/end,
/// `title`, `message`, `percentage`) so generic LSP clients can show it, plus sotalign's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressParams {
    pub token: ProgressToken,
    pub value: JobProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    Begin,
    Report,
    End,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    pub kind: ProgressKind,
    /// Only on `begin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// 0-100 over the whole job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u32>,
    pub job: JobId,
    /// 1, 2, 3, ... per job, with no gaps: notifications and responses may arrive out of
    /// order, so clients keep the highest `seq` they have seen and drop older ones.
    pub seq: u64,
    pub stage: JobStage,
    /// Align jobs: which model the job is working towards (`closed_form`, then `trained`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_stage: Option<ModelStage>,
    /// Progress within `stage`.
    pub step: u64,
    pub total: u64,
    /// The latest training loss (refine stage); absent when the stage has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Estimated seconds until the job ends; absent until an estimate exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<f64>,
    pub elapsed_secs: f64,
}

/// `sotalign/jobFinished` params: sent exactly once per job, after its last `$/progress`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFinishedParams {
    pub job: JobId,
    pub kind: JobKind,
    /// `succeeded`, `failed` or `cancelled`.
    pub state: JobState,
    /// The `seq` of the job's last progress notification, so a client knows whether one is
    /// still in flight (transport order is not guaranteed).
    pub last_seq: u64,
    pub elapsed_secs: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// Held-out metrics of the new model (align jobs that succeeded and had held-out pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<RetrievalMetrics>,
    /// Ingest jobs: samples added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingested: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::jsonrpc::ErrorObject>,
}

// ---------------------------------------------------------------------------------------------
// Pair audit

/// `sotalign/audit` params: audit every confirmed pair (each scored by a model fitted without
/// it) and return the most suspicious ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditParams {
    /// Scoring method (closed-form ones; default `cca`). `sotalign`/`siglip`/`auto` are refused
    /// (a fit per fold and round would take minutes).
    #[serde(default = "default_audit_method")]
    pub method: AlignMethod,
    /// How many pairs to return, most suspicious first (default 20, capped at 1000).
    #[serde(default = "default_pairs_audit")]
    pub limit: u32,
    /// Folds of the cross-fitting (default 5, 2..=20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folds: Option<u32>,
    /// Seed of the fold assignment (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn default_audit_method() -> AlignMethod {
    AlignMethod::Cca
}

fn default_pairs_audit() -> u32 {
    20
}

/// One audited pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditedPair {
    pub image: Sample,
    pub text: Sample,
    /// Larger = more suspicious; above 0, an alternative beats the pair's own partner (a
    /// hub-corrected score margin averaged over both directions).
    pub suspicion: f64,
    /// The pair's score under a model fitted without it.
    pub score: f64,
    /// Above the audit's own cut (decoy-calibrated: estimated more likely wrong than right).
    #[serde(default)]
    pub flagged: bool,
    /// The caption suggested for the image, and its score: the caption of the (flagged) pair
    /// whose swap fits both images better, else the best other caption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_text: Option<AuditPartner>,
    /// The best other image for the caption, and its score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt_image: Option<AuditPartner>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditResult {
    pub method: AlignMethod,
    /// Confirmed pairs audited.
    pub audited: u64,
    /// How many of them are flagged.
    #[serde(default)]
    pub flagged: u64,
    pub pairs: Vec<AuditedPair>,
}

/// A partner the audit suggests instead, with its score under the same cross-fitted model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPartner {
    pub sample: Sample,
    pub score: f64,
}
