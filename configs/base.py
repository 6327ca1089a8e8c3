"""Every field of a jaxgpt experiment, with its default and what it means.

Experiments (`experiments/*.py`) start from `get_config()` here and change what they need;
any field can also be overridden on the command line (`--config.train.steps=200`).
Fields whose value is "derived" use 0 or '' as "work it out", never None, so that the
command line can still override them with a typed value.
"""

import ml_collections

from configs import mesh as mesh_presets


def data_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  # Where documents come from: 'stdlib' (the interpreter's standard-library .py files, no
  # network), 'files' (text files; .jsonl, .jsonl.gz, .jsonl.zst and .parquet shards;
  # directories and globs) or 'tfds' (a TFDS dataset read through tfds.data_source).
  d.source = 'stdlib'
  d.paths = ()  # for source='files': files, directories or globs
  d.val_paths = ()  # an explicit validation source; replaces the hash split when set
  d.extensions = (
    '.py',
    '.txt',
    '.md',
    '.jsonl',
    '.json',
    '.jsonl.gz',
    '.jsonl.zst',
    '.parquet',
  )  # kept when walking a directory
  d.text_field = 'text'  # the text field of JSONL/Parquet records and TFDS examples
  d.tfds_name = ''  # e.g. 'c4/en', 'wikipedia/20230601.en', 'lm1b'
  d.tfds_split = 'train'
  d.tfds_val_split = ''  # e.g. 'validation'; empty: split the training documents
  d.data_dir = ''  # TFDS data_dir; empty: TFDS's default
  # Which curation a source gets: 'web' (prose: language ID, Gopher and C4 rules on top of
  # the basic filters) or 'code' (the basic filters only, which code passes).
  d.profile = 'web'
  # Several sources mixed by weight, name -> source fields (source, paths, text_field,
  # tfds_name, tfds_split, data_dir, extensions, profile) plus `weight`; see
  # experiments/mixture.py. Empty: the one source above. Weights act in the loader, so
  # changing them reuses the prepared store.
  d.mixture = ml_collections.ConfigDict()
  d.max_docs = 0  # at most N documents per source, spread over its files (0: all)
  d.val_fraction = 0.02  # share of documents (by content hash) held out for validation

  d.clean = ml_collections.ConfigDict()
  d.clean.normalize = 'NFC'  # unicodedata form ('NFC', 'NFKC', ...) or '' for none
  d.clean.min_chars = 64  # drop documents shorter than this
  d.clean.max_chars = 1_000_000  # drop documents longer than this (0: no limit)
  d.clean.min_text_fraction = 0.7  # drop if fewer printable characters than this share
  d.clean.max_repeated_line_fraction = 0.5  # drop if this share of lines are repeats
  d.clean.language = ml_collections.ConfigDict()  # 'web' profile: fastText's lid.176 (shipped)
  d.clean.language.languages = ('en',)  # ISO 639-1 codes kept; () skips language ID
  d.clean.language.threshold = 0.65  # minimum probability of the detected language
  d.clean.language.max_chars = 1000  # characters of each document it reads
  d.clean.gopher = ml_collections.ConfigDict()  # 'web': Rae et al. 2021, appendix A
  d.clean.gopher.min_words = 50
  d.clean.gopher.max_words = 100_000
  d.clean.gopher.min_mean_word_length = 3
  d.clean.gopher.max_mean_word_length = 10
  d.clean.gopher.max_symbol_word_ratio = 0.1  # '#' and ellipses per word
  d.clean.gopher.max_bullet_lines = 0.9  # share of lines starting with a bullet
  d.clean.gopher.max_ellipsis_lines = 0.3  # share of lines ending with an ellipsis
  d.clean.gopher.min_alpha_words = 0.8  # share of words with an alphabetic character
  d.clean.gopher.min_stop_words = 2  # of: the, be, to, of, and, that, have, with
  # Gopher's repetition rules too (duplicate lines, paragraphs, n-grams; Rae et al. table A1):
  # thorough but the slowest step, so off; the basic repeated-line filter always runs.
  d.clean.gopher.repetition = False
  d.clean.c4 = ml_collections.ConfigDict()  # 'web': Raffel et al. 2020, section 2.2
  d.clean.c4.min_sentences = 5  # pages with fewer sentences are dropped (-1: off)
  d.clean.c4.min_words_per_line = 3  # shorter lines are dropped (-1: off)
  d.clean.c4.max_word_length = 1000  # lines with a longer word are dropped (-1: off)
  d.clean.c4.terminal_punctuation = True  # drop lines not ending in . ! ? or a quote
  d.clean.c4.curly_bracket = True  # drop pages with a '{' (code)

  d.dedup = ml_collections.ConfigDict()
  d.dedup.exact = True  # drop exact duplicates (same text after normalisation)
  d.dedup.near = True  # drop near duplicates: MinHash LSH, candidate pairs verified
  d.dedup.threshold = 0.7  # estimated Jaccard similarity of word n-grams that counts as near
  d.dedup.ngram = 5  # words per shingle
  d.dedup.bands = 20  # LSH band layout: bands x rows MinHash permutations; a pair becomes a
  d.dedup.rows = 5  # candidate with probability 1 - (1 - J**rows)**bands
  d.dedup.seed = 1

  d.tokenizer = ml_collections.ConfigDict()
  # 'bpe', 'unigram' or 'char': a SentencePiece model of that type trained on the corpus;
  # 'gpt2': GPT-2's byte-level BPE, read from vocab_path and merges_path (jaxgpt/data/bpe.py)
  d.tokenizer.kind = 'bpe'
  d.tokenizer.vocab_size = 8192
  d.tokenizer.model_path = ''  # an existing SentencePiece .model file to use instead
  d.tokenizer.vocab_path = ''  # kind 'gpt2': encoder.json or vocab.json
  d.tokenizer.merges_path = ''  # kind 'gpt2': vocab.bpe or merges.txt
  d.tokenizer.byte_fallback = True  # unknown characters become UTF-8 byte pieces
  d.tokenizer.train_chunks = 200_000  # pieces of documents sampled to train on
  d.tokenizer.sample_mb = 32  # training documents sampled (by hash) to train the tokenizer

  # How the preparation runs and where it keeps its results: fields a resumed run may change.
  d.prep = ml_collections.ConfigDict()
  d.prep.cache_dir = ''  # where the tokenizer and token store go; empty: WORKDIR/data
  # Bad input (a corrupt shard, a non-UTF-8 line, a line that is not JSON, a record without
  # the text field): False stops naming file:line; True skips it, counted and named in the
  # data card.
  d.prep.skip_bad_records = False
  # 'local': here, on data.prep.workers processes. 'slurm': each stage submitted as a Slurm
  # job array after the one before (`--mode=prepare`); see docs/data.md.
  d.prep.executor = 'local'
  d.prep.workers = 0  # local worker processes (0: one per core)
  d.prep.unit_mb = 64.0  # input a task reads at most; fewer, smaller ones for small corpora
  d.prep.slurm = ml_collections.ConfigDict()
  d.prep.slurm.partition = ''
  d.prep.slurm.time = '12:00:00'  # per job of an array
  d.prep.slurm.cpus_per_task = 1
  d.prep.slurm.mem_per_cpu_gb = 4
  d.prep.slurm.qos = ''
  d.prep.slurm.env_command = ''  # run first in each job, e.g. 'source ~/jaxgpt/.venv/bin/activate'
  return d


def no_argument(arg, experiment: str):
  """For an experiment's get_config that takes no `:argument`: one given is a mistake."""
  if arg:
    from jaxgpt.errors import UserError

    raise UserError(
      f'{experiment} takes no :argument (got {arg!r}); drop it, or see the '
      'experiments that take one (gpt2.py, gpt3.py, mixture.py)'
    )


def source_config(**fields) -> ml_collections.ConfigDict:
  """One entry of data.mixture: the data config's source fields, a weight, and `fields`."""
  d = data_config()
  s = ml_collections.ConfigDict(
    {
      k: d[k]
      for k in (
        'source',
        'paths',
        'extensions',
        'text_field',
        'tfds_name',
        'tfds_split',
        'data_dir',
        'profile',
      )
    }
  )
  s.weight = 1.0  # relative share of training windows drawn from this source
  s.update(fields)
  return s


def model_config() -> ml_collections.ConfigDict:
  """The architecture: what the params and the function they compute are."""
  m = ml_collections.ConfigDict()
  m.num_layers = 4
  m.num_heads = 4
  m.d_model = 256
  m.mlp_dim = 0  # 0: 4 * d_model (GELU; for SwiGLU see model.mlp)
  m.seq_len = 128
  m.vocab_size = 0  # 0: the tokenizer's size, rounded up to vocab_multiple
  m.vocab_multiple = 128  # pad the vocabulary so its matmuls tile well
  m.dropout = 0.0
  m.use_bias = True  # biases in dense layers and LayerNorm (GPT-2 has them; Llama has none)
  m.tie_embeddings = True  # output logits reuse the token embedding
  m.dtype = 'float32'  # compute dtype; params and optimizer state stay float32
  m.init_std = 0.02
  m.norm_eps = 1e-5  # the norms' epsilon (GPT-2's; Llama's is 1e-5 or 1e-6)
  # The decoder's parts (jaxgpt/architecture.py): GPT-2's by default, Llama's by choice.
  m.position = 'learned'  # 'learned' (a table of seq_len positions) or 'rope' (rotary)
  m.rope_theta = 10_000.0  # RoPE's base: the longest wavelength is 2 pi theta positions
  m.norm = 'layernorm'  # or 'rmsnorm' (no bias, no mean subtracted)
  m.mlp = 'gelu'  # or 'swiglu': silu(x W_gate) * (x W_up) W_down; mlp_dim 0 is then
  # 8/3 d_model rounded up to a multiple of 256, Llama's rule
  m.num_kv_heads = 0  # key/value heads; 0: num_heads. Fewer: grouped-query attention
  # (a divisor of num_heads; 1 is multi-query), and a KV cache that many heads deep
  m.qk_norm = False  # RMSNorm of queries and keys per head, before RoPE (OLMo 2, Qwen 3)
  # 'sp' (standard: GPT-2's init, one learning rate) or 'mup', the maximal update
  # parametrization for Adam (Yang et al. 2022), with m = d_model / mup_base_width: the
  # blocks' matrices start at init_std / sqrt(m) and learn at lr / m, the logits are
  # multiplied by 1 / m, and attention scales by 1/K (times the base width's sqrt(K), for
  # the same heads). The best learning rate then stays put as the width grows.
  m.parametrization = 'sp'
  m.mup_base_width = 256  # the width at which 'mup' is 'sp'
  # How whole sequences attend: 'auto' (splash on TPU, cuDNN on GPU for 16-bit models,
  # else einsum), 'einsum', 'cudnn', 'splash' or 'reference' (jaxgpt/attention.py). The
  # same function either way: resumed, evaluated or sampled runs may change it.
  m.attention_impl = 'auto'
  return m


def execution_config() -> ml_collections.ConfigDict:
  """How a step is computed: trades of memory for time that leave the params and the loss
  as they are (up to rounding), so a resumed run may change them."""
  x = ml_collections.ConfigDict()
  x.scan_layers = False  # nn.scan over blocks: compile time flat in depth
  x.remat = 'none'  # 'none', 'full', 'dots', 'dots_no_batch': what backward recomputes
  x.attention_block = 0  # query block size for causal attention (0: one full block)
  # 1: the plain loss (jaxgpt/loss.py), whole logits at once. N > 1: the same loss made N
  # chunks of positions at a time (jaxgpt/chunked_loss.py): less memory for a big vocabulary.
  x.loss_chunks = 1
  x.micro_batches = 1  # gradient accumulation: the batch is split into this many
  return x


def optim_config() -> ml_collections.ConfigDict:
  o = ml_collections.ConfigDict()
  o.lr = 1e-3  # peak learning rate, reached after warmup
  o.min_lr = 1e-4  # cosine decay ends here
  o.warmup_steps = 100
  o.decay_steps = 0  # 0: train.steps
  o.weight_decay = 0.1
  o.no_decay = ('bias', 'scale', 'embed')  # weight decay skips params whose name contains these
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.grad_clip = 1.0  # global-norm clip (0: off)
  return o


def train_config() -> ml_collections.ConfigDict:
  """What the run is: its kind, its batches, its length, its objective and its seed."""
  t = ml_collections.ConfigDict()
  t.kind = 'pretrain'  # 'pretrain', or a fine-tune: 'classify', 'instruct' (experiments/finetune_*)
  t.batch_size = 16  # global batch, in sequences
  t.steps = 1000
  t.seed = 0
  t.z_loss = 0.0  # weight of log(Z)^2 per token, keeping the softmax normaliser near 1 (PaLM: 1e-4)
  t.label_smoothing = 0.0  # share of each target's probability spread over the vocabulary
  return t


def loop_config() -> ml_collections.ConfigDict:
  """How the training loop reports, evaluates, saves and stops: a resumed run may change it."""
  r = ml_collections.ConfigDict()
  r.run_steps = 0  # stop this invocation after N steps (0: run to train.steps); resumable
  r.log_every = 50
  r.eval_every = 500
  r.eval_batches = 20  # validation batches per evaluation (0: the whole split)
  r.checkpoint_every = 500
  r.keep_checkpoints = 3
  r.async_checkpoints = True
  # Per-device peak FLOP/s for MFU. 0: on accelerators, the device kind's bf16 peak
  # (configs/devices.py); on CPU, a float32 matmul measured at start-up.
  r.peak_flops = 0.0
  # (first, last): a jax.profiler trace of those steps (from 1) in WORKDIR/tensorboard, for
  # TensorBoard's profile plugin or XProf; () for none.
  r.profile_steps = ()
  # Weights & Biases: a project name turns logging on (metrics.jsonl and TensorBoard stay);
  # the run id is kept in WORKDIR/wandb_id, so a resumed run logs into the same wandb run.
  # WANDB_MODE=offline writes it under WORKDIR/wandb with no network, for `wandb sync`.
  r.wandb_project = ''
  r.wandb_entity = ''  # empty: your default entity
  r.wandb_name = ''  # empty: the workdir's name
  r.wandb_tags = ()
  # A non-finite loss or gradient: False stops the run (the last good checkpoint stays the
  # latest); True skips that update, keeps the params, and counts it.
  r.skip_nonfinite = False
  # Resuming a run whose saved config differs outside RESUMABLE_SECTIONS is refused unless
  # this is True.
  r.allow_config_change = False
  return r


def eval_config() -> ml_collections.ConfigDict:
  e = ml_collections.ConfigDict()
  e.prompt = 'def '  # samples start from this text
  e.num_samples = 2  # samples printed at the end of a run (0: none)
  e.sample_tokens = 96  # new tokens per sample
  e.temperature = 0.8
  e.top_k = 40  # 0: no top-k filtering
  e.top_p = 1.0  # nucleus sampling: keep the most likely tokens up to this mass (1.0: off)
  e.seed = 0  # the samples are a function of the checkpoint, prompts, settings and this
  # JSONL tasks that --mode=eval scores beside the loss (see jaxgpt/tasks.py for the layouts):
  # multiple choice (context, choices, label) or last-word cloze (text).
  e.tasks = ()
  # Put between a multiple-choice context and a choice when neither has whitespace there
  # (real HellaSwag, PIQA and ARC choices have none), as lm-eval's target_delimiter.
  e.target_delimiter = ' '
  return e


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = data_config()
  c.model = model_config()
  c.optim = optim_config()
  c.train = train_config()
  c.execution = execution_config()
  c.loop = loop_config()
  c.eval = eval_config()
  c.mesh = mesh_presets.get('dp')  # where the run runs
  return c


# The sections a resumed run may change: how a step is computed, where it runs, how the loop
# reports and saves, what evaluation and sampling do, and how the data preparation runs.
# Everything else (data, model, optim, train) makes the run what it is.
RESUMABLE_SECTIONS = ('execution', 'mesh', 'loop', 'eval', 'data.prep')
# And where GPT-2's tokenizer files are: a resumed run encodes with its checkpoint's tokenizer.
RESUMABLE_FIELDS = (
  'model.attention_impl',
  'data.tokenizer.vocab_path',
  'data.tokenizer.merges_path',
)
