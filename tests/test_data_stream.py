"""`xllama data build` in bounded memory (issue 15): the streaming readers, a build in small batches equals a
build in large ones and the collected (in-memory) reading, peak memory in a child process, scratch files
removed after an error, and clear errors from the streams."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from xllama.data import mix as mix_module
from xllama.data import sources
from xllama.data.mix import MixSpec, build_mix, clean_pairs, load_mix, write_mix
from xllama.data.sample import sample_spec
from xllama.data.sources import Origins, iter_parallel, load_parallel
from xllama.errors import XllamaError
from xllama.prompts import translation_instruction

REPO = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(500)] + ["house", "river", "green", "small", "walks", "quickly"]


def write_pairs(prefix: Path, n: int, seed: int = 0, side_chars: int = 60, duplicates: float = 0.02) -> None:
    """A Moses pair PREFIX.en / PREFIX.de of n synthetic sentence pairs (some exact duplicates, some empty)."""
    rng = random.Random(seed)
    text = " ".join(rng.choices(WORDS, k=200_000))
    with open(f"{prefix}.en", "w", encoding="utf-8") as en, open(f"{prefix}.de", "w", encoding="utf-8") as de:
        for i in range(n):
            if i and rng.random() < duplicates:
                i = rng.randrange(i)  # an exact duplicate of an earlier pair
            a = i * 7919 % (len(text) - 2 * side_chars - 40)
            length = side_chars + i % 17
            en.write(f"{i} {text[a:a + length].strip()}.\n")
            de.write(f"{i} {text[a + 7:a + 7 + length].strip()}!\n" if i % 97 else "\n")  # every 97th: empty side


def pairs_spec(location, **extra) -> MixSpec:
    return MixSpec.from_dict({"mix": "custom", "parallel": {"en-de": str(location)}, "guard_enabled": False,
                              "accept_language_mismatch": True, **extra})


def rows(dataset) -> list[tuple]:
    columns = dataset.to_dict()
    return list(zip(*(columns[c] for c in mix_module.COLUMNS)))


def without_timing(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "build_seconds"}


# ---------------------------------------------------------------------------------------------- readers


def test_streamed_batches_equal_the_collected_reading(tmp_path):
    write_pairs(tmp_path / "corpus", 2_000)
    whole = load_parallel(str(tmp_path / "corpus"), "en", "de")
    provenance = {}
    batches = list(iter_parallel(str(tmp_path / "corpus"), "en", "de", batch_size=333, provenance=provenance))
    assert [len(b) for b in batches] == [333] * 6 + [2]
    assert [s for b in batches for s in b.source] == whole.source
    assert [t for b in batches for t in b.target] == whole.target
    assert provenance == whole.provenance and provenance["pairs"] == 2_000
    # the origin of every pair is its line, made into text only when asked for
    assert isinstance(whole.origin, Origins) and len(whole.origin) == 2_000
    assert whole.origin[0].endswith("corpus.en:line 1") and whole.origin[-1].endswith("corpus.en:line 2000")
    assert list(whole.origin)[1234] == whole.origin[1234] == batches[3].origin[1234 - 999]


def test_records_and_tsv_streams_keep_line_numbers(tmp_path):
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"translation": {"en": "a", "de": "b"}}\n\n{"translation": {"en": "c", "de": "d"}}\n')
    data = load_parallel(str(jsonl), "en", "de")
    assert data.source == ["a", "c"] and data.origin[1].endswith("pairs.jsonl:line 3")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes("de\ten\n\neins\tone\r\nzwei\u2028x\ttwo\n".encode())
    data = load_parallel(str(tsv), "en", "de")
    assert data.source == ["one", "two"] and data.target == ["eins", "zwei\u2028x"]  # only '\n' ends a line
    assert data.origin[1].endswith("pairs.tsv:line 4")


def test_moses_line_count_mismatch_names_both_files(tmp_path):
    write_pairs(tmp_path / "corpus", 30)
    with open(tmp_path / "corpus.de", "a", encoding="utf-8") as f:
        f.write("one more\nand another\n")
    with pytest.raises(XllamaError) as e:
        build_mix(pairs_spec(tmp_path / "corpus"), progress=False, scratch_dir=tmp_path / "scratch")
    message = str(e.value)
    assert f"{tmp_path / 'corpus.en'} has 30 lines" in message and f"{tmp_path / 'corpus.de'} has 32" in message
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_line_that_is_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "corpus.en").write_bytes(b"one\ntwo\n")
    (tmp_path / "corpus.de").write_bytes(b"eins\nzw\xffei\n")
    with pytest.raises(XllamaError, match=r"corpus\.de: line 2: not UTF-8"):
        load_parallel(str(tmp_path / "corpus"), "en", "de")


# ---------------------------------------------------------------------------------------------- the build


def test_build_in_small_batches_equals_build_in_large_ones(tmp_path, monkeypatch):
    """Batch boundaries change nothing: rows, their order, the manifest (counts, content hash, language check)."""
    write_pairs(tmp_path / "corpus", 600, duplicates=0.05)
    spec = sample_spec(("de",), parallel={"en-de": str(tmp_path / "corpus")}, directions="both",
                       accept_language_mismatch=True, parallel_sizes={"de": 800}, upsample=True)
    large, large_manifest = build_mix(spec, progress=False, scratch_dir=tmp_path)
    monkeypatch.setattr(sources, "BATCH_SIZE", 7)
    monkeypatch.setattr(mix_module, "SCRATCH_BATCH", 5)
    monkeypatch.setattr(mix_module, "GATHER_ROWS", 3)
    small, small_manifest = build_mix(spec, progress=False, scratch_dir=tmp_path)
    assert rows(small) == rows(large)
    assert without_timing(small_manifest) == without_timing(large_manifest)
    assert large_manifest["sizes"]["translation_en-de"]["repeated"] > 0
    assert large_manifest["removed_by_source"]["translation_en-de"]["duplicates"] > 0


def test_streamed_build_equals_the_collected_pipeline(tmp_path):
    """The streamed build against the same steps on the collected corpus: load_parallel, clean_pairs, the
    translation rows, Python's seeded shuffle."""
    write_pairs(tmp_path / "corpus", 2_500)
    dataset, manifest = build_mix(pairs_spec(tmp_path / "corpus"), progress=False, scratch_dir=tmp_path)
    data = load_parallel(str(tmp_path / "corpus"), "en", "de")
    keep, removed = clean_pairs(data, "translation_en-de", None, True, 1, 1500, 3.0)
    expected = []
    for i in keep:
        a, b = data.source[i].strip(), data.target[i].strip()
        expected.append((translation_instruction("en", "de", key=a), a, b, "translation", "de", "en-de"))
    random.Random(42).shuffle(expected)
    assert rows(dataset) == expected
    assert manifest["removed_by_source"]["translation_en-de"] == removed.as_dict()
    assert removed.filtered > 0 and removed.duplicates > 0
    assert manifest["sources"][0]["loaded"] == 2_500 and manifest["examples"] == len(keep)


def test_dataset_is_memory_mapped_and_write_mix_copies_it(tmp_path):
    write_pairs(tmp_path / "corpus", 500)
    dataset, manifest = build_mix(pairs_spec(tmp_path / "corpus"), progress=False, scratch_dir=tmp_path / "s")
    [backing] = [f["filename"] for f in dataset.cache_files]
    assert Path(backing).is_file() and Path(backing).parent.parent == tmp_path / "s"
    assert mix_module._backing_file(dataset) == backing  # write_mix copies the file, not the rows
    write_mix(dataset, manifest, tmp_path / "mix", progress=False)
    loaded, loaded_manifest = load_mix(tmp_path / "mix")
    assert rows(loaded) == rows(dataset) and loaded_manifest["content_hash"] == manifest["content_hash"]
    # the same mix saved by datasets itself reads back the same
    write_mix(dataset.select(range(len(dataset))), manifest, tmp_path / "mix2", progress=False)
    assert rows(load_mix(tmp_path / "mix2")[0]) == rows(loaded)
    del dataset
    import gc

    gc.collect()
    assert not Path(backing).exists()  # the build's own file goes with its Dataset


def test_scratch_folder_is_removed_after_an_error(tmp_path):
    """A bad record in the second source fails the build after the first was written to scratch: nothing is
    left behind, and the CLI leaves no output folder."""
    write_pairs(tmp_path / "good", 200)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"translation": {"en": "one house", "fr": "une maison"}}\n{"translation": \n')
    scratch = tmp_path / "scratch"
    spec = MixSpec.from_dict({"mix": "custom", "parallel": {"en-de": str(tmp_path / "good"), "en-fr": str(bad)},
                              "guard_enabled": False, "accept_language_mismatch": True})
    with pytest.raises(XllamaError, match=r"bad\.jsonl: line 2: malformed JSON"):
        build_mix(spec, progress=False, scratch_dir=scratch)
    assert list(scratch.iterdir()) == []
    # an error after pass 1 (nothing left after cleaning) too
    (tmp_path / "empty.en").write_text("one\ntwo\n")
    (tmp_path / "empty.de").write_text("\n\n")
    with pytest.raises(XllamaError, match="the mix is empty"):
        build_mix(pairs_spec(tmp_path / "empty"), progress=False, scratch_dir=scratch)
    assert list(scratch.iterdir()) == []
    out = tmp_path / "out" / "mix"
    proc = subprocess.run([sys.executable, "-m", "xllama", "data", "build", "--mix", "custom", "--parallel",
                           f"en-de={tmp_path / 'good'}", "--parallel", f"en-fr={bad}", "--no-guard",
                           "--accept-language-mismatch", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and "bad.jsonl: line 2" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------------------------------------- memory

RSS_PAIRS, RSS_SIDE = 20_000, 1_400  # 20K pairs of ~1,400 characters a side: ~57 MB of text
RSS_BOUND_MIB = 420

BUILD = """
import sys
from xllama.data.mix import MixSpec, build_mix, write_mix
spec = MixSpec.from_dict({"mix": "custom", "parallel": {"en-de": sys.argv[1]}, "guard_enabled": False,
                          "accept_language_mismatch": True})
dataset, manifest = build_mix(spec, progress=False, scratch_dir=sys.argv[2])
write_mix(dataset, manifest, sys.argv[2] + "/mix", progress=False)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest) across exec
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(manifest["examples"], peak_kib // 1024)
"""


def test_peak_memory_of_a_build_stays_bounded(tmp_path):
    """Peak RSS of a build + write of ~57 MB of pair text, in a child process, stays under RSS_BOUND_MIB.

    Measured on the shared 2-core CPU machine (2026-11-30) with this script: the streaming build peaks at
    301 MiB (about 170 MiB of it is Python, pyarrow, datasets and lingua; 407 MiB while the final gather still
    took 65,536 rows of 2.8 KB at a time, before GATHER_BYTES); the in-memory build it replaced (HEAD before
    issue 15, same corpus, same script without scratch_dir) at 556 MiB. So this test fails if the corpus is
    held in memory again."""
    write_pairs(tmp_path / "corpus", RSS_PAIRS, side_chars=RSS_SIDE, duplicates=0.0)
    proc = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / "corpus"), str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    examples, peak_mib = map(int, proc.stdout.split())
    assert examples > 0.95 * RSS_PAIRS
    assert peak_mib < RSS_BOUND_MIB, f"peak RSS {peak_mib} MiB"
    assert json.loads((tmp_path / "mix" / "manifest.json").read_text())["examples"] == examples


def test_draw_on_arrays_equals_draw_on_lists():
    """The numpy path of the one sub-sampler draws the same records with the same accounting."""
    import numpy as np

    from xllama.data.sample import draw

    indices = list(range(3, 400, 3))
    for size in (None, 0, 1, 50, 0.5, 1.0, 133, 300):
        for repeat in (False, True):
            listed, listed_info = draw(indices, size, 42, "translation_en-de", repeat=repeat)
            arrayed, arrayed_info = draw(np.array(indices, dtype=np.int64), size, 42, "translation_en-de", repeat)
            assert arrayed.tolist() == listed and arrayed_info == listed_info, (size, repeat)


def test_stride_sample_spreads_evenly_over_a_stream_of_unknown_length():
    from xllama.data.langid import StrideSample

    for total in (0, 5, 399, 400, 10_000):
        sample, texts = StrideSample(200), [str(i) for i in range(total)]
        for start in range(0, total, 77):
            chunk = texts[start:start + 77]
            sample.extend(len(chunk), chunk.__getitem__)
        assert sample.texts == texts[::sample.stride] and len(sample.texts) < 400
        assert total < 400 or len(sample.texts) >= 200
