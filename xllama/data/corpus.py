"""Monolingual corpora: documents labelled by language -> one text set (columns ``text``, ``lang``) on disk.

Continued pre-training (ALMA stage 1) trains on plain text per language. ``build_corpus`` reads each language's
locations in turn as a stream (``sources.iter_documents``: text, JSON/JSONL/parquet records, folders of them, or
Hub corpora, up to a document cap and a character limit per language), checks on an evenly spread sample that
each language's text is in that language (:mod:`xllama.data.langid`, as for the mixer's sources), and writes the
documents in batches to an Arrow file that the returned Dataset memory-maps: memory does not grow with the
corpus. Its manifest has the header every data build writes (:func:`xllama.data.mix.manifest`).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from xllama.data.langid import SAMPLE as LANGID_SAMPLE
from xllama.data.langid import LanguageChecker, StrideSample
from xllama.data.mix import _mapped_dataset, _scratch_parent, manifest
from xllama.data.sources import iter_documents
from xllama.errors import XllamaError

CORPUS_FORMAT = "xllama-corpus"
COLUMNS = ("text", "lang")
BATCH = 2000  # documents per record batch


def build_corpus(sources: dict[str, list[str]], text_field: str = "text", max_documents: int | None = None,
                 hub_chars: dict[str, int | None] | None = None, accept_language_mismatch: bool = False,
                 where: str = "data.monolingual", progress: bool = True):
    """Every language's documents -> (Dataset[text, lang] memory-mapped from disk, grouped by language, manifest).

    ``sources`` maps a language to its locations, read in order until ``max_documents`` documents (per
    language). A Hub corpus is also cut at ``hub_chars[lang]`` characters, and needs one of the two limits (else
    the stream would be read to its end). ``where`` names the sources in errors and in the language check. The
    manifest records per language the documents, characters and provenance of every location, and the language
    check's detected shares.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    started = time.perf_counter()
    hub_chars = hub_chars or {}
    checker = LanguageChecker(list(sources), accept_mismatch=accept_language_mismatch)
    schema = pa.schema([(c, pa.string()) for c in COLUMNS])
    digest, per_language = hashlib.blake2b(digest_size=16), {}
    parent = _scratch_parent(None)  # $XLLAMA_CACHE/tmp or $TMPDIR: it needs room for the corpus
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".xllama-corpus-", dir=parent))
    try:
        path = scratch / "corpus.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as out, \
                tqdm(desc="reading documents", unit=" docs", disable=not progress, leave=False) as bar:
            for lang, locations in sources.items():
                provenance, documents, chars, sample = [], 0, 0, StrideSample(LANGID_SAMPLE)
                for location in locations:
                    left = None if max_documents is None else max_documents - documents
                    if left == 0:
                        break
                    limit = hub_chars.get(lang) if location.startswith("hf:") else None
                    if location.startswith("hf:") and limit is None and left is None:
                        raise XllamaError(f"{where}.{lang}: a Hub corpus ({location}) is read as a stream and needs "
                                          "a limit: set max_documents (the stream would otherwise be read to its "
                                          "end)")
                    provenance.append({})
                    for docs in iter_documents(location, lang, text_field, left, limit, provenance[-1], batch=BATCH):
                        for doc in docs:
                            digest.update(doc.encode("utf-8") + b"\n")
                        sample.extend(len(docs), docs.__getitem__)
                        out.write_batch(pa.record_batch([pa.array(docs, pa.string()), pa.array([lang] * len(docs))],
                                                        schema=schema))
                        documents, chars = documents + len(docs), chars + sum(map(len, docs))
                        bar.update(len(docs))
                if not documents:
                    raise XllamaError(f"{where}.{lang}: no non-empty documents in {', '.join(locations)}")
                checker.check(f"{where}.{lang}", lang, sample.texts, ", ".join(locations))
                per_language[lang] = {"documents": documents, "chars": chars, "sources": provenance}
        dataset = _mapped_dataset(path)
        weakref.finalize(dataset, shutil.rmtree, str(scratch), True)  # write_mix copies it into the run first
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return dataset, manifest(CORPUS_FORMAT, len(dataset), COLUMNS, digest.hexdigest(), started,
                             languages=per_language, language_check=checker.results)
