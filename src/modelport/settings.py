"""The one place configuration comes from: environment variables prefixed ``MODELPORT_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PUBLIC_HF_ENDPOINT = "https://huggingface.co"
# The seeds require presigned URLs to stay valid this long, so a long download never outlives its URL.
MIN_PRESIGNED_VALIDITY_S = 100 * 60


class Settings(BaseSettings):
    """Everything modelport can be told. Every field is ``MODELPORT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="MODELPORT_", extra="ignore")

    data_dir: Path = Field(
        default=Path("./data"), description="Where the SQLite database and the local blob store live."
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL. Empty means a SQLite file in the data dir; "
        "postgresql+psycopg://user@host/db is supported.",
    )
    blob_url: str = Field(
        default="",
        description="Blob store: file:///path (empty means <data_dir>/blobs) or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint for an s3:// blob store.")
    s3_region: str = Field(default="us-east-1", description="S3 region for an s3:// blob store.")
    s3_access_key_id: str | None = Field(default=None, description="S3 access key (else boto3's chain).")
    s3_secret_access_key: str | None = Field(default=None, description="S3 secret key.")
    hf_endpoint: str = Field(default=PUBLIC_HF_ENDPOINT, description="Base URL of the Hugging Face hub.")
    bootstrap_api_key: str | None = Field(
        default=None,
        description="If set while no account exists, the first account is created with this API key.",
    )
    bootstrap_account: str = Field(default="admin", description="Name of the bootstrapped account.")
    workers: int = Field(default=2, ge=0, description="Ingestion workers run inside `modelport serve`.")
    job_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="A Running job whose worker has not reported for this long is taken back (resumed or failed).",
    )
    job_max_attempts: int = Field(default=3, ge=1, description="Tries before a job that keeps dying fails.")
    job_poll_interval_s: float = Field(default=0.5, gt=0, description="How often idle workers look for jobs.")
    fetch_allow_http: bool = Field(
        default=False,
        description="Allow plain http:// archive URLs (tests, on-prem stores); https is always allowed.",
    )
    fetch_allow: str = Field(
        default="",
        description="Comma-separated hosts (.example.com for a domain), addresses and CIDRs that fetches may "
        "reach although they are loopback or private: an on-prem S3 store or hub, tests. Everything else must "
        "resolve to public addresses only.",
    )
    fetch_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Stall timeout: a download that receives nothing for this long is retried.",
    )
    fetch_retries: int = Field(
        default=5,
        ge=0,
        description="How often a broken download is resumed (HTTP Range) before the job fails.",
    )
    fetch_min_bytes_per_s: int = Field(
        default=16 * 2**10,
        ge=0,
        description="A download (archive URL or Hugging Face repo) that receives less than this on average over "
        "MODELPORT_FETCH_MIN_RATE_WINDOW_S of waiting on the network fails with source_too_slow, so a source that "
        "drips cannot hold an ingest worker; 0 turns the floor off.",
    )
    fetch_min_rate_window_s: float = Field(
        default=60.0,
        gt=0,
        description="The window over which MODELPORT_FETCH_MIN_BYTES_PER_S is averaged (time spent waiting on the "
        "network; time the download waits for our own unpacking does not count).",
    )
    fetch_deadline_s: float = Field(
        default=4 * 3600.0,
        gt=0,
        description="A job's whole download (every file of a repo, every retry) must finish within this long, or "
        "it fails with source_too_slow. The default moves a 200 GiB archive at about 15 MiB/s.",
    )
    max_archive_bytes: int = Field(default=200 * 2**30, gt=0, description="Largest archive accepted.")
    max_artifact_bytes: int = Field(default=200 * 2**30, gt=0, description="Largest unpacked model accepted.")
    max_archive_members: int = Field(default=10_000, gt=0, description="Most files an archive may hold.")
    max_compression_ratio: float = Field(
        default=100.0, gt=1, description="Refuse archives that inflate more than this many times (bombs)."
    )
    extract_threads: int = Field(default=2, ge=1, description="Zip members extracted in parallel.")
    admission_max_bytes: int = Field(
        default=2 * 2**30,
        ge=0,
        description="Models (or adapter bases) whose weights fit this budget are loaded on CPU and run one "
        "forward pass before they are Complete; bigger ones get the structural check only.",
    )
    check_timeout_s: float = Field(
        default=900.0, gt=0, description="Validation and admission (in a child process) are stopped after this long."
    )
    stage_delay_s: float = Field(
        default=0.0, ge=0, description="Testing aid: pause this long at the start of each ingest stage."
    )
    blob_gc_grace_s: float = Field(
        default=3600.0, ge=0, description="Unreferenced blobs younger than this are left alone by cleanup."
    )

    max_upload_bytes: int = Field(
        default=200 * 2**30, gt=0, description="Largest archive accepted by direct and resumable uploads."
    )
    upload_part_max_bytes: int = Field(
        default=512 * 2**20, gt=0, description="Largest part of a resumable upload (parts default to 64 MiB)."
    )
    upload_stall_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A request body (an upload, or any other) that sends nothing for this long, or arrives slower "
        "than 16 KiB/s on average after this long, is dropped with 408.",
    )
    http_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection whose request headers are not complete this long after it opened (or after its "
        "previous response) is closed, so slow-drip clients cannot pile up.",
    )
    http_max_connections: int = Field(
        default=2048,
        ge=1,
        description="Open connections plus running requests beyond which `modelport serve` answers 503.",
    )
    max_body_bytes: int = Field(
        default=2**20,
        gt=0,
        description="Largest request body of an authenticated JSON or form route (uploads and inference have their "
        "own caps); a larger one is refused with 413 before it is parsed.",
    )
    max_inference_body_bytes: int = Field(
        default=16 * 2**20,
        gt=0,
        description="Largest body of a chat, completion or embedding request (room for long prompts); 413 past it.",
    )
    max_anonymous_body_bytes: int = Field(
        default=64 * 2**10,
        gt=0,
        description="Largest body of a request that carries no API key or session yet (the sign-in form); 413 "
        "past it. Routes that need a key check it before reading any body byte.",
    )
    web_session_ttl_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="How long a web console sign-in lasts. The cookie holds a signed session token naming the key "
        "(never the key); revoking the key ends its sessions at once.",
    )
    web_origins: str = Field(
        default="",
        description="Comma-separated origins (https://console.example.com) besides the request's own host from "
        "which the sign-in form may be posted: set it when a proxy in front rewrites the Host header.",
    )
    metrics_access: Literal["loopback", "key", "open"] = Field(
        default="loopback",
        description="Who may read GET /metrics (Prometheus): loopback lets clients on this host in without a key "
        "and asks others for an administrator's API key (Authorization: Bearer); key asks every client for one; "
        "open asks no one. Behind a reverse proxy on this host that does not send X-Forwarded-For, every client "
        "looks local: use key.",
    )
    upload_ttl_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Uploads older than this are removed by cleanup (unless in use); so are the parts of a "
        "direct multipart upload (Together v2) that was never completed.",
    )
    public_url: str = Field(
        default="",
        description="The URL clients reach this server at, when a proxy stands in between (https://models.example."
        "com): the signed part URLs of direct uploads and downloads (Together v2) are built on it. Empty: the URL "
        "each request came to.",
    )
    signed_url_ttl_s: float = Field(
        default=6 * 3600.0,
        gt=0,
        le=7 * 86400.0,
        description="How long the signed part URLs of a direct upload or a download (Together v2) stay valid. "
        "They carry no API key: each is good for one part of one file (upload) or one file (download).",
    )
    quota_models: int = Field(
        default=0, ge=0, description="Models and adapters one account may have (any status); 0 means no limit."
    )
    quota_stored_bytes: int = Field(
        default=0,
        ge=0,
        description="Bytes one account may keep: its stored models plus its uploads, finished or still receiving "
        "(a resumable upload counts its declared size from creation; an upload a ready model was made from counts "
        "once, through the model); 0 means no limit.",
    )
    quota_open_uploads: int = Field(
        default=8,
        ge=0,
        description="Uploads one account may have still receiving (resumable or whole) at once; more get 429 until "
        "one is completed or deleted. 0 means no limit.",
    )
    quota_endpoints: int = Field(
        default=100,
        ge=1,
        description="Endpoints one account may have (each a name over deployments; Together 3.x's /v2 endpoints).",
    )
    quota_deployments_per_endpoint: int = Field(
        default=20, ge=1, description="Deployments one endpoint may hold, running or stopped."
    )
    quota_endpoint_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of this host's endpoint hardware (its GPUs, or without GPUs the RAM pool of "
        "MODELPORT_ENDPOINT_MEMORY_BYTES) one account's running endpoints may reserve together, but never less than "
        "the smallest configuration; past it endpoints get 429 quota_exceeded. 1 lets one account take everything "
        "(a single-tenant server).",
    )
    quota_active_jobs: int = Field(
        default=16,
        ge=0,
        description="Upload jobs one account may have queued or running at once (more get 429); 0 means no limit.",
    )
    quota_running_jobs_per_account: int | None = Field(
        default=None,
        ge=0,
        description="Upload jobs of one account that workers run at once; its other jobs wait Queued while other "
        "accounts' jobs are claimed first. Unset means MODELPORT_WORKERS - 1 (at least 1), so one worker is always "
        "left for other accounts; with workers in several processes set it to their total less one, or lower. "
        "0 means no limit.",
    )
    quota_requests_per_minute: int = Field(
        default=0,
        ge=0,
        description="Inference requests one account may send per minute, with bursts up to that many (more get "
        "429 with Retry-After); 0 means no limit.",
    )
    usage_flush_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="How often a server writes the usage it counted (requests and tokens per account, model and "
        "day) to the database, in one transaction; what is not yet written is written at shutdown, and a server's "
        "own GET /api/v1/usage writes it first. Other servers' counts show up within this long.",
    )
    engine: Literal["transformers", "fake"] = Field(
        default="transformers",
        description="Inference engine: transformers (embedded, CPU or CUDA) or fake (tests and demos, no weights).",
    )
    engine_fake_token_delay_s: float = Field(
        default=0.0,
        ge=0,
        le=10,
        description="With MODELPORT_ENGINE=fake: seconds between the tokens it makes up, to watch streams, "
        "cancellations and load in tests and demos.",
    )
    engine_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Engine processes that serve serverless models (the API process runs none itself). A request "
        "goes to one that has its model and adapter loaded, else to the least loaded; the default memory budgets "
        "are shared equally, and on CPU each gets an equal share of the cores (OMP_NUM_THREADS) unless that is set.",
    )
    engine_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of the engine processes the server starts (serverless workers and endpoint "
        "replicas): where they share the CPU with the API process, uploads, job polls and the console are "
        "answered first and generation takes the rest; 0 gives them the API's priority.",
    )
    engine_sockets: str = Field(
        default="",
        description="Comma-separated Unix socket paths of engine processes started separately (`modelport engine "
        "--socket PATH` on this host, with the same MODELPORT_DATA_DIR); when set, the server serves serverless "
        "models on those and starts none of its own (MODELPORT_ENGINE_WORKERS is ignored).",
    )
    engine_device: str = Field(default="auto", description="Device for the embedded engine: auto, cpu, cuda, cuda:1…")
    engine_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weights dtype when serving. auto: bfloat16 on CPUs that multiply it in hardware (AMX or "
        "AVX512-BF16), float32 on other CPUs; on CUDA the model's stored bfloat16/float16, else bfloat16.",
    )
    engine_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="Weights each engine process keeps loaded before evicting idle models (LRU); 0 means half the "
        "RAM on CPU, 80% of the GPU's memory on CUDA, shared equally by the MODELPORT_ENGINE_WORKERS.",
    )
    max_num_seqs: int = Field(
        default=32, ge=1, description="Sequences decoded together per model; further requests queue."
    )
    max_loras: int = Field(
        default=16, ge=1, description="LoRA adapters resident per base model; the least recently used is replaced."
    )
    max_queued_requests: int = Field(
        default=512, ge=1, description="Requests waiting per model beyond which new ones get 503."
    )
    prefill_token_budget: int = Field(
        default=4096,
        ge=1,
        description="Prompt tokens prefilled per engine step, so long prompts cannot stall decoding.",
    )
    prefix_caching: bool = Field(
        default=True,
        description="Keep prompts' keys and values by block of 32 tokens, so a request whose prompt begins as an "
        "earlier one's did (same model, adapter and account) prefills only the rest.",
    )
    prefix_cache_bytes: int = Field(
        default=0,
        ge=0,
        description="Memory for cached prompt prefixes, all loaded models together (least recently used out "
        "first); 0 means an eighth of MODELPORT_ENGINE_SEQUENCE_MEMORY_BYTES.",
    )
    max_model_len: int = Field(
        default=32768,
        ge=16,
        description="The longest context (prompt plus completion) served for any model, whatever its config "
        "declares: a model's context is the smaller of the two. Longer requests get 400 context_length_exceeded.",
    )
    engine_sequence_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="Memory the engine gives running sequences (KV caches and forward-pass scratch), all loaded "
        "models together, beside MODELPORT_ENGINE_MEMORY_BYTES for weights. A prompt that could not fit even "
        "alone gets 400 context_length_exceeded before anything is allocated; others wait for room. 0 means a "
        "quarter of the RAM on CPU, 10% of the GPU's memory on CUDA, shared equally by the MODELPORT_ENGINE_WORKERS.",
    )
    max_prompt_bytes: int = Field(
        default=4 * 2**20,
        gt=0,
        description="Most UTF-8 bytes of prompt one request may send (a completion's prompt, a chat's messages, "
        "all inputs of an embeddings call), whatever the model; checked before tokenizing (400 "
        "context_length_exceeded). Each model's own cap is lower when its context length times "
        "MODELPORT_PROMPT_BYTES_PER_TOKEN is.",
    )
    prompt_bytes_per_token: int = Field(
        default=32,
        ge=1,
        description="Bytes of prompt allowed per token of a model's context before tokenizing: text averages 3-5 "
        "bytes a token, so a longer prompt cannot fit and is refused without the work of tokenizing it. "
        "Embedding inputs are cut at this many bytes per token of max_seq_length (they are truncated anyway).",
    )
    chat_template_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="CPU time one rendering of a model's chat template may take (templates are tenants' code, "
        "rendered in worker processes); past it the request fails with 400 chat_template_budget_exceeded.",
    )
    chat_template_memory_bytes: int = Field(
        default=256 * 2**20,
        ge=16 * 2**20,
        description="Memory a chat-template worker process may use beyond its own start (RLIMIT_AS); a render "
        "that needs more fails with 400 chat_template_budget_exceeded.",
    )
    chat_template_workers: int = Field(
        default=2,
        ge=1,
        description="Worker processes rendering chat templates; one account may use all but one of them at once.",
    )

    endpoint_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="RAM that CPU endpoint replicas may reserve together; 0 means half the host's RAM.",
    )
    endpoint_adapter_slots: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="LoRA adapters one deployment may have attached (Together v2's POST …/deployments/{d}/adapters); "
        "when all are taken an attach is refused with 409, unless it passes force, which detaches the least "
        "recently used. Its replicas load attached adapters on demand, MODELPORT_MAX_LORAS at a time.",
    )
    hardware_prices: dict[str, float] = Field(
        default_factory=dict,
        description='Cents per minute by hardware id, shown by GET /v1/hardware (JSON: {"2x_cpu_8gb": 1.5}); '
        "0 when absent.",
    )
    replica_max_restarts: int = Field(
        default=3, ge=0, description="Crashes an endpoint replica may have before the endpoint goes to ERROR."
    )
    replica_start_timeout_s: float = Field(
        default=600.0, gt=0, description="A replica that has not loaded its model after this long counts as crashed."
    )
    rollout_interval_s: float = Field(
        default=1.0, gt=0, description="How often the rollout controller checks each active rollout's step and gates."
    )
    fault_delays: dict[str, float] = Field(
        default_factory=dict,
        description="Fault injection, for testing rollout gates: a JSON object of deployment names and the seconds "
        'of latency the router adds before each request reaches them, e.g. {"canary": 0.5}.',
    )

    ray_address: str = Field(
        default="",
        description="Run endpoint replicas on a Ray cluster instead of this host: `auto`, `HOST:6379` or "
        "`ray://HOST:10001` (needs `pip install 'modelport[ray]'` here and on every node). Empty: replicas are "
        "processes of this server (the local backend). See docs/scaling.md.",
    )
    ray_namespace: str = Field(
        default="modelport",
        description="The Ray namespace of this installation's replica actors; servers sharing a database share it.",
    )
    ray_call_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long the server waits for the Ray cluster to answer one call before it reports the "
        "cluster unreachable (endpoints on it go to ERROR with the reason; everything else keeps answering).",
    )
    ray_serverless_replicas: int = Field(
        default=1,
        ge=0,
        le=64,
        description="With MODELPORT_RAY_ADDRESS: engine actors on the cluster that serve serverless models (any base "
        "model, its adapters multiplexed: a request goes to one that already holds its adapter). 0 keeps serverless "
        "models on this server's own engine processes; so does a cluster that does not answer.",
    )
    ray_serverless_cpus: float = Field(
        default=1.0,
        gt=0,
        description="Ray CPUs each serverless engine actor reserves (a fraction shares a core).",
    )
    ray_serverless_gpus: int = Field(
        default=0, ge=0, le=8, description="Ray GPUs each serverless engine actor reserves (0: it runs on CPU)."
    )
    ray_serverless_memory_bytes: int = Field(
        default=4 * 1024**3,
        ge=256 * 1024**2,
        description="Ray memory each serverless engine actor reserves, and its weights budget on CPU; taken off the "
        "cluster memory that endpoints reserve from.",
    )
    node_cache_dir: Path = Field(
        default=Path("/tmp/modelport-node"),
        description="On a Ray node (read from the environment of `ray start`): where replicas keep the models they "
        "fetch from the blob store.",
    )
    controller_lease_s: float = Field(
        default=15.0,
        gt=0,
        description="Several servers on one database: one of them (the holder of this lease, renewed every third of "
        "it) supervises endpoints, autoscales and drives rollouts; when it goes away another takes over after "
        "this long. Every server routes requests.",
    )

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'modelport.db'}"
        if not self.blob_url:
            self.blob_url = (self.data_dir / "blobs").as_uri()
        if not self.blob_url.startswith(("file://", "s3://")):
            raise ValueError("MODELPORT_BLOB_URL must start with file:// or s3://")
        self.hf_endpoint = self.hf_endpoint.rstrip("/")
        return self

    @property
    def running_jobs_per_account(self) -> int:
        """``quota_running_jobs_per_account`` with its default applied; 0 means no limit."""
        if self.quota_running_jobs_per_account is not None:
            return self.quota_running_jobs_per_account
        return max(1, self.workers - 1)

    @property
    def model_cache_dir(self) -> Path:
        """Stored models materialized as folders for the engine to load; rebuilt from blobs when missing."""
        return self.data_dir / "cache" / "models"

    @property
    def uploads_dir(self) -> Path:
        """Archives sent straight to the API, whole or in parts, until they are ingested or expire."""
        return self.data_dir / "uploads"

    @property
    def multipart_dir(self) -> Path:
        """Parts of direct multipart uploads (Together v2), until their revision is made or they expire."""
        return self.data_dir / "multipart"

    @property
    def staging_dir(self) -> Path:
        """Local scratch space for downloads and extraction; never visible as a model."""
        return self.data_dir / "staging"
