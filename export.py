"""
Write a trained model as a Hugging Face folder (config.json, model.safetensors, and GPT-2's tokenizer where the
model reads it), which transformers loads with AutoModelForCausalLM.from_pretrained(folder). Only what transformers
computes exports: arch=gpt2 with pe=learned (GPT2LMHeadModel) and arch=llama with pe=rope (LlamaForCausalLM, with
linear position interpolation); any other pe is refused with one line.

$ python export.py --ckpt out/gpt2_run --out out/gpt2_hf
"""
import os

from configurator import configure, die, exit_on_ctrl_c
from core import read_checkpoint
from hf import write_hf

# -----------------------------------------------------------------------------
ckpt = ''                 # a run to export: its out_dir or ckpt.pt
out = ''                  # the folder to write
overwrite = False         # write into a folder that already holds files
# -----------------------------------------------------------------------------
configure(globals())
exit_on_ctrl_c()
if not ckpt or not out:
    die("name the run and the folder: python export.py --ckpt out/run --out out/run_hf")
if os.path.isdir(out) and os.listdir(out) and not overwrite:
    die(f"{out} already holds files: name a new folder, or pass --overwrite to write over them")
if os.path.exists(out) and not os.path.isdir(out):
    die(f"--out {out} is a file: name a folder")
try:
    checkpoint, path = read_checkpoint(ckpt)
    written = write_hf(checkpoint, out)
except (FileNotFoundError, ValueError) as e:
    die(e)
except OSError as e:  # a full or read-only disk: what was already in place stays whole (each file is moved in whole)
    die(f"cannot write {out}: {e.strerror or e}: free space or choose another folder")
print(f"wrote {', '.join(written)} to {out} (arch={checkpoint['model_args']['arch']}, pe={checkpoint['model_args']['pe']})")
