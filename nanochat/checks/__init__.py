"""Checks for the exercises: `check_rope(apply_rope)` tells a learner whether their function is right.

Each check calls the learner's function on random inputs and on the edge cases where the
usual mistakes show, compares every answer with the package's own implementation, and
either prints what it verified or raises CheckFailed with a verdict: the input, the
expected and the actual answer, and a hint that names the mistake when it recognises one.
The exercises live in exercises/ (generated from solutions/ by `python -m nanochat.exercises`).
"""
from nanochat.checks.chat import (check_collate, check_gsm8k_parts, check_inputs_and_targets, check_masked_loss,
                                  check_pack_padded_row, check_render_conversation)
from nanochat.checks.data import check_batch_from_rows, check_pack_row, check_rank_row_groups
from nanochat.checks.engine import check_calculator, check_greedy_decode, check_sample_top_k
from nanochat.checks.evaluation import check_centered_accuracy, check_chatcore, check_choose_letter, check_core_choice
from nanochat.checks.model import check_causal_attention, check_mlp, check_rms_norm, check_rope
from nanochat.checks.muon import check_adamw_step, check_muon_step, check_newton_schulz
from nanochat.checks.pretrain import check_accumulate_gradients, check_bits_per_byte, check_lr_schedule
from nanochat.checks.rl import check_group_advantages, check_gsm8k_reward, check_policy_gradient_loss
from nanochat.checks.tokenizer import check_encode, check_merge, check_train_bpe
from nanochat.checks.verdict import CheckFailed

__all__ = [name for name in dir() if name.startswith("check_")] + ["CheckFailed"]
