"""Translation metrics: BLEU, spBLEU, chrF++, COMET, BLEURT and the off-target rate, each with a signature.

A number is only comparable with another when it was computed the same way, so every metric returns its
score together with a signature string (sacreBLEU's own for BLEU/chrF++, model and version for COMET/BLEURT).
BLEU's tokenizer follows the *target* language (``13a``, ``zh`` for Chinese, ``char`` for ja/ko/th; see
``xllama.languages``). Argument order is always hypotheses first, references second, as in sacreBLEU's
``corpus_bleu(hyps, [refs])``: swapping them changes BLEU (the brevity penalty and precision are one-sided).

Scores are on a 0-100 scale: BLEU, spBLEU and chrF++ as sacreBLEU reports them, COMET and BLEURT (natively
about 0-1) multiplied by 100 (the signature says ``scale:100``), the off-target rate as a percentage.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import Sequence

from xllama.errors import XllamaError
from xllama.languages import LANGUAGES, get_language

log = logging.getLogger(__name__)

METRICS = ("bleu", "spbleu", "chrf", "comet", "cometkiwi", "xcomet", "bleurt", "off_target")
DEFAULT_COMET_MODEL = "Unbabel/wmt22-comet-da"
# The COMET family by metric name: each its own default checkpoint (cometkiwi needs no references).
COMET_METRICS = {"comet": DEFAULT_COMET_MODEL, "cometkiwi": "Unbabel/wmt22-cometkiwi-da",
                 "xcomet": "Unbabel/XCOMET-XL"}
DEFAULT_BLEURT_MODEL = "lucadiliello/BLEURT-20-D12"
DEFAULT_SPBLEU_TOKENIZE = "flores101"  # the FLORES-101 paper's spBLEU; 'flores200' is the newer model
SPBLEU_TOKENIZERS = ("flores101", "flores200")
BLEU_TOKENIZERS = ("none", "zh", "13a", "intl", "char", "ja-mecab", "ko-mecab") + SPBLEU_TOKENIZERS
SPM_MODEL_ENV = "XLLAMA_SPM_MODEL"  # a local copy of the flores SentencePiece model, for offline machines
BLEURT_INSTALL = "pip install git+https://github.com/lucadiliello/bleurt-pytorch.git"


def check_segments(hyps: Sequence[str], refs: Sequence[str], srcs: Sequence[str] | None = None,
                   names: tuple[str, str, str] = ("hypotheses", "references", "sources")) -> None:
    """Hypotheses, references (and sources) must be non-empty lists of strings of the same length."""
    for name, items in zip(names, (hyps, refs, srcs)):
        if items is None:
            continue
        if isinstance(items, str):
            raise XllamaError(f"{name}: expected a list of segments, got a single string")
        if len(items) == 0:
            raise XllamaError(f"{name}: no segments to score")
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise XllamaError(f"{name}: segment {i + 1} is {type(item).__name__}, expected a string")
    if len(hyps) != len(refs):
        raise XllamaError(f"{names[0]} has {len(hyps)} segments but {names[1]} has {len(refs)}")
    if srcs is not None and len(srcs) != len(hyps):
        raise XllamaError(f"{names[2]} has {len(srcs)} segments but {names[0]} has {len(hyps)}")


# --------------------------------------------------------------------------------------------- BLEU / chrF++


def bleu(hyps: Sequence[str], refs: Sequence[str], tgt: str | None = None, tokenize: str | None = None,
         spm_model: str | os.PathLike | None = None) -> tuple[float, str]:
    """Corpus BLEU with the target language's tokenizer (or ``tokenize``); returns (score, signature)."""
    from sacrebleu.metrics import BLEU

    check_segments(hyps, refs)
    note = ""
    if tokenize is None:
        if tgt is None:
            raise XllamaError("BLEU needs the target language (or an explicit tokenizer)")
        tokenize = get_language(tgt).bleu_tokenize
        morphological = MECAB_TOKENIZERS.get(get_language(tgt).code)
        if morphological:  # sacreBLEU's ja-mecab / ko-mecab where installed, else characters, said so
            if mecab_available(morphological[0]):
                tokenize = morphological[0]
            else:
                note = f"|note:{morphological[0]} not installed ({morphological[1]}), tok:char used"
    if tokenize not in BLEU_TOKENIZERS:
        raise XllamaError(f"unknown BLEU tokenizer {tokenize!r}; known: {', '.join(BLEU_TOKENIZERS)}")
    if tokenize in SPBLEU_TOKENIZERS:
        metric = BLEU(tokenize="none")
        metric.tokenizer = spm_tokenizer(tokenize, spm_model)
        metric.tokenizer_signature = metric.tokenizer.signature()
    else:
        metric = BLEU(tokenize=tokenize)
    score = metric.corpus_score(list(hyps), [list(refs)])
    return score.score, metric.get_signature().format() + note


# Japanese and Korean BLEU: sacreBLEU's MeCab tokenizers (WMT's) when their packages are installed
MECAB_TOKENIZERS = {"ja": ("ja-mecab", "pip install 'sacrebleu[ja]'"),
                    "ko": ("ko-mecab", "pip install 'sacrebleu[ko]'")}


@functools.lru_cache(maxsize=None)
def mecab_available(tokenize: str) -> bool:
    """Whether sacreBLEU's ``ja-mecab`` / ``ko-mecab`` tokenizer can be built here (MeCab and its dictionary)."""
    from sacrebleu.metrics import BLEU

    try:
        BLEU(tokenize=tokenize)
    except Exception:  # noqa: BLE001 - sacreBLEU raises RuntimeError/ImportError/SystemExit-like errors
        return False
    return True


def spbleu(hyps: Sequence[str], refs: Sequence[str], tokenize: str = DEFAULT_SPBLEU_TOKENIZE,
           spm_model: str | os.PathLike | None = None) -> tuple[float, str]:
    """spBLEU: BLEU over the FLORES SentencePiece pieces, the same tokenizer for every language."""
    if tokenize not in SPBLEU_TOKENIZERS:
        raise XllamaError(f"unknown spBLEU tokenizer {tokenize!r}; known: {', '.join(SPBLEU_TOKENIZERS)}")
    return bleu(hyps, refs, tokenize=tokenize, spm_model=spm_model)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> tuple[float, str]:
    """chrF++ (character 6-grams plus word 2-grams); returns (score, signature)."""
    from sacrebleu.metrics import CHRF

    check_segments(hyps, refs)
    metric = CHRF(word_order=2)
    score = metric.corpus_score(list(hyps), [list(refs)])
    return score.score, metric.get_signature().format()


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "XLLAMA_OFFLINE"))


def spm_tokenizer(name: str, spm_model: str | os.PathLike | None = None):
    """sacreBLEU's flores101/flores200 SentencePiece tokenizer, from a local copy when one is given.

    Looked up in order: ``spm_model`` (the ``--spm-model`` option), ``$XLLAMA_SPM_MODEL``, sacreBLEU's own
    cache (``$SACREBLEU/models/``, default ``~/.sacrebleu/models/``), then sacreBLEU's download. Offline
    (HF_HUB_OFFLINE=1 or XLLAMA_OFFLINE=1) no download is tried and the error says how to get the file.
    """
    from sacrebleu.tokenizers import tokenizer_spm

    url = tokenizer_spm.SPM_MODELS[name]["url"]
    cache_path = Path(tokenizer_spm.SACREBLEU_DIR) / "models" / os.path.basename(url)
    local = spm_model or os.environ.get(SPM_MODEL_ENV)
    if local:
        local = Path(local)
        if not local.is_file():
            raise XllamaError(f"SentencePiece model for {name} not found: {local}")
        return _load_spm_tokenizer(name, local)
    if cache_path.is_file() and cache_path.stat().st_size > 0:
        return _load_spm_tokenizer(name, cache_path)
    how = (
        f"spBLEU ({name}) needs sacreBLEU's SentencePiece model, which is not at {cache_path}. "
        f"Download it where there is internet (curl -L -o {os.path.basename(url)} {url}) and either copy it "
        f"to {cache_path} (sacreBLEU's cache; $SACREBLEU moves it), pass --spm-model FILE, or set "
        f"{SPM_MODEL_ENV}=FILE"
    )
    if _offline():
        raise XllamaError(how + " (offline: HF_HUB_OFFLINE/XLLAMA_OFFLINE is set, so no download was tried)")
    from sacrebleu.utils import download_file

    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)
    try:
        download_file(url, str(cache_path))
    except (Exception, SystemExit) as e:  # sacreBLEU calls sys.exit on SSL errors
        for leftover in (cache_path, Path(f"{cache_path}.lock")):  # an empty file would pass for the model
            if leftover.is_file() and leftover.stat().st_size == 0:
                leftover.unlink()
        raise XllamaError(f"{how} (download failed: {e})") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return _load_spm_tokenizer(name, cache_path)


def _load_spm_tokenizer(name: str, path: Path):
    """A sacreBLEU TokenizerSPM loaded from ``path`` (same pieces, same signature), without a download."""
    import sentencepiece
    from sacrebleu.tokenizers.tokenizer_spm import SPM_MODELS, TokenizerSPM

    tokenizer = TokenizerSPM.__new__(TokenizerSPM)
    tokenizer.name = SPM_MODELS[name]["signature"]
    tokenizer.sp = sentencepiece.SentencePieceProcessor()
    try:
        tokenizer.sp.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise XllamaError(f"{path}: not a SentencePiece model ({e})") from None
    return tokenizer


# ------------------------------------------------------------------------------------------- off-target rate


@functools.lru_cache(maxsize=1)
def _language_detector():
    """lingua's detector restricted to the registry's languages: built once, ~2 s to load its models."""
    check_metric_packages(["off_target"])
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*languages).build()


def detect_language(text: str) -> str | None:
    """The ISO 639-1 code of ``text``'s language among the registry's languages, or None if undecidable."""
    if not text or not text.strip():
        return None
    result = _language_detector().detect_language_of(text)
    return result.iso_code_639_1.name.lower() if result is not None else None


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """detect_language over many texts at once (lingua runs them in parallel)."""
    texts = list(texts)
    found: list[str | None] = [None] * len(texts)
    todo = [i for i, t in enumerate(texts) if t and t.strip()]
    if todo:
        results = _language_detector().detect_languages_in_parallel_of([texts[i] for i in todo])
        for i, result in zip(todo, results):
            found[i] = result.iso_code_639_1.name.lower() if result is not None else None
    return found


def off_target_rate(hyps: Sequence[str], tgt: str) -> float:
    """Percentage of outputs whose detected language is not ``tgt`` (empty or undecidable outputs count)."""
    target = get_language(tgt).code
    if len(hyps) == 0:
        raise XllamaError("hypotheses: no segments to score")
    detected = detect_languages(hyps)
    return 100.0 * sum(code != target for code in detected) / len(detected)


# --------------------------------------------------------------------------------------------- COMET/BLEURT


def _default_gpus(gpus: int | None) -> int:
    if gpus is not None:
        return gpus
    import torch

    return 1 if torch.cuda.is_available() else 0


def resolve_comet_checkpoint(model: str) -> Path:
    """A COMET checkpoint path: a ``.ckpt`` file, a model folder (``checkpoints/model.ckpt``), or a Hub id."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        ckpt = path / "checkpoints" / "model.ckpt"
        if not ckpt.is_file():
            raise XllamaError(f"COMET model folder {path} has no checkpoints/model.ckpt")
        if not (path / "hparams.yaml").is_file():
            raise XllamaError(f"COMET model folder {path} has no hparams.yaml")
        return ckpt
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise XllamaError(f"COMET model {model!r} is neither a local checkpoint nor a Hub id such as "
                          f"{DEFAULT_COMET_MODEL}")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id=model, local_files_only=_offline()))
    except Exception as e:  # offline cache miss, unknown repo, HTTP errors
        raise XllamaError(
            f"could not get COMET model {model!r} ({type(e).__name__}: {e}). Where there is internet run "
            f"`huggingface-cli download {model}` (the encoder its hparams.yaml names, e.g. xlm-roberta-large, "
            f"is needed too), or pass a local checkpoint: --comet-model PATH (a folder with hparams.yaml and "
            f"checkpoints/model.ckpt)"
        ) from None
    return resolve_comet_checkpoint(str(folder))


@functools.lru_cache(maxsize=len(COMET_METRICS))
def _load_comet(checkpoint: str):
    """Load a COMET model once per process (every translation direction reuses it, one per metric)."""
    check_metric_packages(["comet"])
    from comet import load_from_checkpoint

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return load_from_checkpoint(checkpoint, local_files_only=_offline())
    except Exception as e:
        raise XllamaError(f"could not load COMET checkpoint {checkpoint}: {e}") from None


def comet(hyps: Sequence[str], refs: Sequence[str] | None, srcs: Sequence[str] | None,
          model: str = DEFAULT_COMET_MODEL, batch_size: int = 16, gpus: int | None = None,
          progress: bool = True) -> tuple[float, str, list[float]]:
    """System COMET x 100 through unbabel-comet, any model of the family (wmt22-comet-da, XCOMET, and the
    reference-free CometKiwi, for which ``refs`` may be None); returns (score, signature, segment scores)."""
    check_segments(hyps, hyps if refs is None else refs, srcs)
    if srcs is None:
        raise XllamaError("COMET scores (source, hypothesis, reference) triples: give the sources (--src FILE)")
    checkpoint = resolve_comet_checkpoint(model)
    scorer = _load_comet(str(checkpoint))
    # wmt22-comet-da requires references, CometKiwi reads none, XCOMET reads them when given
    with_refs = scorer.requires_references() or "ref" in scorer.hparams.get("input_segments", ())
    if refs is None and scorer.requires_references():
        raise XllamaError(f"COMET model {model} needs references")
    with_refs = with_refs and refs is not None
    samples = [{"src": s, "mt": h, **({"ref": r} if with_refs else {})}
               for s, h, r in zip(srcs, hyps, refs if with_refs else hyps)]
    gpus = _default_gpus(gpus)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = scorer.predict(samples, batch_size=batch_size, gpus=gpus, progress_bar=progress)
    from importlib import metadata

    signature = f"model:{model}|comet:{metadata.version('unbabel-comet')}|scale:100"
    if not with_refs:
        signature += "|ref:none"
    return 100.0 * float(output.system_score), signature, [float(s) for s in output.scores]


def bleurt(hyps: Sequence[str], refs: Sequence[str], model: str = DEFAULT_BLEURT_MODEL,
           batch_size: int = 16, gpus: int | None = None) -> tuple[float, str]:
    """Mean BLEURT x 100 through the PyTorch port (``bleurt_pytorch``, an optional install)."""
    check_segments(hyps, refs)
    try:
        from bleurt_pytorch import BleurtForSequenceClassification, BleurtTokenizer
    except ImportError:
        raise XllamaError(f"BLEURT needs the PyTorch port, which is not installed: {BLEURT_INSTALL}") from None
    import torch

    device = "cuda" if _default_gpus(gpus) > 0 else "cpu"
    try:
        tokenizer = BleurtTokenizer.from_pretrained(model)
        scorer = BleurtForSequenceClassification.from_pretrained(model).to(device).eval()
    except OSError as e:
        raise XllamaError(f"could not load BLEURT model {model!r}: {e}") from None
    scores: list[float] = []
    with torch.no_grad():
        for i in range(0, len(hyps), batch_size):
            inputs = tokenizer(list(refs[i:i + batch_size]), list(hyps[i:i + batch_size]), padding="longest",
                               truncation=True, return_tensors="pt").to(device)
            scores.extend(scorer(**inputs).logits.flatten().tolist())
    return 100.0 * sum(scores) / len(scores), f"model:{model}|bleurt-pytorch|scale:100"


# ------------------------------------------------------------------------------------------------ all at once


# metric -> (module, distribution, how to install): optional packages, checked before any slow work
METRIC_PACKAGES = {
    "off_target": ("lingua", "lingua-language-detector", "pip install lingua-language-detector"),
    "comet": ("comet", "unbabel-comet", "pip install 'xllama[comet]' (it needs transformers<5 and numpy<2)"),
}
METRIC_PACKAGES.update({name: METRIC_PACKAGES["comet"] for name in COMET_METRICS})


def check_metric_packages(names: Sequence[str]) -> None:
    """A clear error, not a traceback, when a metric's optional package is not installed."""
    from importlib.util import find_spec

    for name in names:
        if name in METRIC_PACKAGES:
            module, dist, install = METRIC_PACKAGES[name]
            if find_spec(module) is None:
                raise XllamaError(f"metric {name!r} needs the {dist} package, which is not installed: {install}; "
                                  f"or leave {name} out of --metrics")


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'bleu,chrf,comet' -> validated metric names (order kept, repeats dropped)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for item in items:
        name = item.strip().lower().replace("-", "_")
        if not name:
            continue
        if name not in METRICS:
            raise XllamaError(f"unknown metric {item.strip()!r}; known: {', '.join(METRICS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise XllamaError(f"no metric given in {spec!r}")
    return tuple(names)


def score_translation(
    hyps: Sequence[str],
    refs: Sequence[str],
    tgt: str,
    srcs: Sequence[str] | None = None,
    metrics: str | Sequence[str] = ("bleu", "chrf"),
    bleu_tokenize: str | None = None,
    spbleu_tokenize: str = DEFAULT_SPBLEU_TOKENIZE,
    spm_model: str | os.PathLike | None = None,
    comet_model: str = DEFAULT_COMET_MODEL,
    comet_batch_size: int = 16,
    bleurt_model: str = DEFAULT_BLEURT_MODEL,
    gpus: int | None = None,
    cometkiwi_model: str = COMET_METRICS["cometkiwi"],
    xcomet_model: str = COMET_METRICS["xcomet"],
    progress: bool = True,
) -> dict:
    """Score one system's outputs for one target language.

    Returns ``{"bleu": 12.3, "chrf": 40.1, ..., "n": 1012, "signature": {"bleu": "nrefs:1|...", ...}}``;
    the runners store everything but ``signature`` under ``scores`` and ``signature`` under ``signatures``.
    """
    names = parse_metrics(metrics)
    target = get_language(tgt).code
    check_segments(hyps, refs, srcs)
    check_metric_packages(names)
    comet_models = {"comet": comet_model, "cometkiwi": cometkiwi_model, "xcomet": xcomet_model}
    comet_models = {name: model for name, model in comet_models.items() if name in names}
    if comet_models and srcs is None:  # fail before any other metric or model is computed
        raise XllamaError("COMET scores (source, hypothesis, reference) triples: give the sources (--src FILE)")
    # A missing SentencePiece model or COMET checkpoint fails here, before any slow work.
    if "spbleu" in names and spbleu_tokenize in SPBLEU_TOKENIZERS:
        spm_tokenizer(spbleu_tokenize, spm_model)
    for model in comet_models.values():
        resolve_comet_checkpoint(model)
    out: dict = {}
    signature: dict[str, str] = {}
    for name in names:
        if name == "bleu":
            out["bleu"], signature["bleu"] = bleu(hyps, refs, target, tokenize=bleu_tokenize, spm_model=spm_model)
        elif name == "spbleu":
            out["spbleu"], signature["spbleu"] = spbleu(hyps, refs, spbleu_tokenize, spm_model)
        elif name == "chrf":
            out["chrf"], signature["chrf"] = chrf(hyps, refs)
        elif name in comet_models:
            out[name], signature[name], _ = comet(hyps, refs, srcs, comet_models[name], comet_batch_size, gpus,
                                                  progress)
        elif name == "bleurt":
            out["bleurt"], signature["bleurt"] = bleurt(hyps, refs, bleurt_model, comet_batch_size, gpus)
        elif name == "off_target":
            out["off_target"] = off_target_rate(hyps, target)
            signature["off_target"] = f"lingua:{_lingua_version()}|languages:{len(LANGUAGES)}|target:{target}"
    out["n"] = len(hyps)
    out["signature"] = signature
    return out


def _lingua_version() -> str:
    from importlib import metadata

    return metadata.version("lingua-language-detector")
