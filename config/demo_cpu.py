# The CPU demo: a tiny byte-level model on the embedded Shakespeare corpus, trained at 128 tokens and
# evaluated at up to 16x (2048). Sized so that `bash demo.sh`, which trains three of them (ExPE, RoPE,
# TAPE), runs in minutes on 2 CPU cores (README: the timed run, setup included). Any pe works:
#   python train.py config/demo_cpu.py --pe=alibi --out_dir=out/demo_alibi
out_dir = 'out/demo_expe'
data_dir = 'data/shakespeare_byte'
arch = 'gpt2'
pe = 'expe'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
block_size = 128
batch_size = 16
max_iters = 1000
learning_rate = 2e-3       # small models tolerate a high rate
warmup_iters = 50
eval_interval = 250
eval_iters = 20
log_interval = 50
compile = False            # compiling costs more than it saves on a few minutes of CPU training
