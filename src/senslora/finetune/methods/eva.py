"""EVA (PEFT): LoRA initialised from a forward-only SVD of each target's inputs on calibration batches.

Ranks are redistributed within the uniform budget by explained variance (rho = 2 caps a module at twice
the average); padding tokens are left out of the SVD, and BERT's pooler (one row per example) gets its
rows as they are.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from senslora.finetune.methods.base import AdapterSettings, Method

EVA_RHO = 2.0


def eva_layer_rows(layer_input: Any, token_indices: Any, layer_name: str) -> Any:
    """EVA's SVD input for one layer: non-padding token rows (batch, seq, d_in) -> (tokens, d_in), or one
    row per example for a layer that sees (batch, d_in) (BERT's pooler)."""
    x = layer_input[0] if isinstance(layer_input, tuple | list) else layer_input
    if x.dim() >= 3:
        return x[token_indices.T.unbind()]
    return x.reshape(-1, x.shape[-1]).contiguous()


class Eva(Method):
    name = "eva"

    def needs_calibration(self, has_ranks: bool) -> bool:
        return True

    def build(self, model: nn.Module, settings: AdapterSettings) -> nn.Module:
        from peft import EvaConfig, LoraConfig, get_peft_model, initialize_lora_eva_weights

        names = self.uniform_targets(model, settings)
        if settings.eva_batches is None:
            raise ValueError("method 'eva' needs calibration batches for its SVD initialisation")
        config = LoraConfig(
            r=settings.avg_rank,
            lora_alpha=settings.lora_alpha,
            target_modules=names,
            init_lora_weights="eva",
            eva_config=EvaConfig(rho=EVA_RHO, use_label_mask=settings.task in ("causal_lm", "instruction")),
            **settings.common_config(),
        )
        peft_model = get_peft_model(model, config)
        initialize_lora_eva_weights(
            peft_model,
            settings.eva_batches,
            prepare_layer_inputs_fn=eva_layer_rows,
            show_progress_bar=settings.progress,
        )
        return peft_model
