# Integer addition at CPU scale (TAPE's length-generalization experiment, after McLeish et al. 2024):
# every row one problem `a+b=c`, digits reversed, operands of 1..N digits, loss on the answer only
# (synthetic.py). Then exact match on a grid of operand lengths up to 4N:
# python train.py config/addition_cpu.py --pe=rope --out_dir=out/addition_rope
# python eval_tasks.py --ckpt out/addition_rope --tasks addition --out out/addition_eval
# Sizing so far (rope, one thread, 2-core machine; ~170 ms/step alone): seed 1337 reaches val loss
# 0.02 and 97.4% in-distribution exact match at 2,800 steps; seed 1338 stays at val loss 0.63 (32.4%)
# after 3,500. With batch 256, lr 1e-3, 1,500 steps (~500 ms/step): seed 1337 99.8% ID (val loss
# 0.003), seed 1338 1.3% (1.41). Learning the carries is a sudden, seed-dependent transition at this
# size: the settings below are not yet ones that reach 95% for every seed (see results/run_addition.sh).
out_dir = 'out/addition_expe'
arch = 'gpt2'
pe = 'expe'
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
addition_digits = 6        # N
block_size = 22            # 3N + 4: the longest training problem, EOT a + b = c
batch_size = 64
max_iters = 2800
learning_rate = 2e-3
warmup_iters = 100
eval_interval = 500
eval_iters = 20
log_interval = 50
compile = False
