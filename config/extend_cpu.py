# Context extension at CPU scale (results/run_extend.sh): a run of config/demo_cpu.py (T = 128) goes on
# at T = 256 from its weights. Every row gets this budget (300 steps x 2,048 tokens, the parents'
# tokens per step), data and seed; the row adds its parent, pe and extension, e.g. TAPE's recipe:
#   python train.py config/extend_cpu.py --init_from=out/results/rope-s1337 --pe=tape \
#       --trainable=pe,wte,norm --out_dir=out/extend/tape-peft-s1337
# The model settings are the demo's: a run started from another keeps them (train.py refuses others).
out_dir = 'out/extend'
data_dir = 'data/shakespeare_byte'
arch = 'gpt2'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
block_size = 256           # twice the parents' 128
batch_size = 8             # 2,048 tokens per step, as the parents
max_iters = 300            # 0.6M tokens, 30% of a parent's 2M
learning_rate = 5e-4       # between the parents' final (2e-4) and peak (2e-3) rates; cosine to 5e-5
warmup_iters = 30
eval_interval = 100
eval_iters = 20
log_interval = 25
compile = False
