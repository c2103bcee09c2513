"""Code explanation: snippets to explain, reference explanations, and the seed's scores for them.

The code generation / explanation write-up scored a model's explanations against references with
BLEU and BERTScore; ROUGE-L is the summarisation metric papers report beside them. Each score
comes from its maintained library, per item, so the evaluation can put an interval on the mean
and test two variants on the same snippets:

- `bleu`: sacreBLEU's sentence BLEU against every reference (its default exponential smoothing),
  divided by 100 so all three share a 0-1 scale (the report prints it back on sacreBLEU's 0-100);
- `rougeL`: rouge-score's ROUGE-L F-measure with stemming, the best reference counting;
- `bertscore_f1`: bert-score's F1 with the encoder and layer given (the best reference counting),
  without baseline rescaling. Scores depend on the encoder: numbers from a local model are not
  comparable to the paper's `roberta-large` ones.
"""

from __future__ import annotations

import functools
from typing import Any

from tunelab.core.io import read_jsonl, require_rows

INSTRUCTION = "Explain what this Python code does.\n\n```python\n{code}\n```"
METRICS = ("bleu", "rougeL", "bertscore_f1")


def load_explanation_tasks(path: str, limit: int = 0) -> list[dict[str, Any]]:
    """Rows {id, code, references} in file order; `limit` keeps the first N."""
    rows = require_rows(read_jsonl(path), path)
    for number, row in enumerate(rows, 1):
        references = row.get("references")
        if not isinstance(row.get("code"), str) or not row["code"].strip() or "id" not in row:
            raise ValueError(f"{path} line {number}: an explanation task needs an `id` and non-empty `code`")
        if not isinstance(references, list) or not references or not all(isinstance(r, str) and r.strip()
                                                                            for r in references):
            raise ValueError(f"{path} line {number} ({row['id']}): `references` must be a list of one or more "
                             "non-empty explanations")
    return rows[: limit or None]


def prompt_text(code: str) -> str:
    return INSTRUCTION.format(code=code.rstrip("\n"))


@functools.cache
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@functools.cache
def encoder_layer(encoder: str, layer: int | None) -> int:
    """The hidden layer BERTScore reads: `layer`, or two thirds of the encoder's depth (bert-score's
    tuned layer for roberta-large is 17 of 24; none is tuned for a decoder like SmolLM2)."""
    from transformers import AutoConfig

    depth = AutoConfig.from_pretrained(encoder).num_hidden_layers
    if layer is None:
        return max(1, round(depth * 2 / 3))
    if not 1 <= layer <= depth:
        raise ValueError(f"evaluate.explanation.bertscore_layer: {layer} is outside 1..{depth}, the layers of "
                         f"{encoder}; pick one in range or null for two thirds of the depth")
    return layer


@functools.cache
def _bert_scorer(encoder: str, layer: int) -> Any:
    from bert_score import BERTScorer
    from transformers import AutoConfig

    scorer = BERTScorer(model_type=encoder, num_layers=layer, batch_size=8, device="cpu")
    # bert-score truncates at the tokenizer's model_max_length, which a decoder's tokenizer often
    # leaves at a huge sentinel the fast tokenizer cannot take: use the model's own context length.
    context = AutoConfig.from_pretrained(encoder).max_position_embeddings
    scorer._tokenizer.model_max_length = min(scorer._tokenizer.model_max_length, context)
    return scorer


def score_explanation(answer: str, references: list[str], encoder: str, layer: int) -> dict[str, float]:
    """BLEU, ROUGE-L and BERTScore F1 of one answer against its references, each on 0-1."""
    import sacrebleu

    if not answer.strip():  # an empty answer explains nothing (and bert-score cannot encode it)
        return dict.fromkeys(METRICS, 0.0)
    rouge = _rouge().score_multi(references, answer)["rougeL"].fmeasure
    _, _, f1 = _bert_scorer(encoder, layer).score([answer], [references])
    return {"bleu": sacrebleu.sentence_bleu(answer, references).score / 100, "rougeL": float(rouge),
            "bertscore_f1": float(f1[0])}
