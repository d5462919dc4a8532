"""Would ONNX Runtime encode item texts faster than PyTorch? The measurement behind
freshrec having no ONNX backend (issue 18, part 4).

    pip install onnxruntime onnx onnxscript   # not dependencies of freshrec
    python benchmarks/onnx_probe.py [--items ../shared/data/ml-100k]

Exports the packaged all-MiniLM-L6-v2 transformer with ``torch.onnx.export`` (the
sentence-transformers ONNX backend needs ``optimum-onnx``, whose release pins
transformers and huggingface-hub below what sentence-transformers requires), runs it
with ONNX Runtime in fp32 and with dynamic int8 quantisation (two settings), pools
and normalises as sentence-transformers does, and prints items/s against
``SentenceEncoder`` on the same texts, alternately, with the smallest cosine between
the two embeddings of any text. Also prints the GFLOP/s of a plain matrix product,
the ceiling for either runtime on this CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from encode import DEFAULT_ML, texts_from
from freshrec.encoders.sentence import SentenceEncoder


def matmul_gflops() -> float:
    a, b = torch.randn(1024, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    started = time.perf_counter()
    for _ in range(50):
        a @ b
    return 2 * 1024 * 384 * 1536 * 50 / (time.perf_counter() - started) / 1e9


class OnnxEncoder:
    def __init__(self, path: Path, encoder: SentenceEncoder):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.tokenizer = encoder._model.tokenizer
        self.max_length = encoder._model.max_seq_length
        self.batch = encoder.batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        order = np.argsort([-len(t) for t in texts])  # by length, as sentence-transformers batches
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(texts), self.batch):
            rows = order[start : start + self.batch]
            tokens = self.tokenizer(
                [texts[r] for r in rows], padding=True, truncation=True, max_length=self.max_length, return_tensors="np"
            )
            mask = tokens["attention_mask"].astype(np.int64)
            ids = tokens["input_ids"].astype(np.int64)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


def export(encoder: SentenceEncoder, folder: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    transformer = encoder._model[0].auto_model.eval()

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # type: ignore[no-any-return]

    sample = encoder._model.tokenizer(["a sample text", "another"], padding=True, return_tensors="pt")
    fp32 = folder / "fp32.onnx"
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}, "hidden": {0: "b", 1: "s"}}
    torch.onnx.export(
        Hidden(), (sample["input_ids"], sample["attention_mask"]), str(fp32),
        input_names=["input_ids", "attention_mask"], output_names=["hidden"], dynamic_axes=axes, dynamo=False,
    )  # fmt: skip
    paths = {"onnx fp32": fp32, "onnx int8": folder / "int8.onnx", "onnx int8 per-channel": folder / "int8pc.onnx"}
    quantize_dynamic(str(fp32), str(paths["onnx int8"]), weight_type=QuantType.QInt8)
    quantize_dynamic(
        str(fp32), str(paths["onnx int8 per-channel"]), weight_type=QuantType.QInt8, per_channel=True,
        reduce_range=True, op_types_to_quantize=["MatMul"],
    )  # fmt: skip
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=Path, default=DEFAULT_ML)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    name, texts = texts_from(args.items)
    encoder = SentenceEncoder()
    print(f"{len(texts):,} {name} item texts; a plain matrix product: {matmul_gflops():.0f} GFLOP/s")
    with tempfile.TemporaryDirectory() as folder:
        runtimes = {label: OnnxEncoder(path, encoder) for label, path in export(encoder, Path(folder)).items()}
        reference = encoder.encode(texts)
        for runtime in runtimes.values():
            runtime.encode(texts[:64])  # warm-up
        for label, runtime in runtimes.items():
            for _ in range(args.rounds):  # alternately, on a machine whose speed drifts
                started = time.perf_counter()
                encoder.encode(texts)
                torch_s = time.perf_counter() - started
                started = time.perf_counter()
                vectors = runtime.encode(texts)
                onnx_s = time.perf_counter() - started
                cosine = float((vectors * reference).sum(1).min())
                print(
                    f"{label}: {len(texts) / onnx_s:,.0f} items/s against torch {len(texts) / torch_s:,.0f}"
                    f" ({torch_s / onnx_s:.2f}x), smallest cosine {cosine:.4f}"
                )


if __name__ == "__main__":
    main()
