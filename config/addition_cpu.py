# Integer addition at CPU scale (TAPE's length-generalization experiment, after McLeish et al. 2024):
# every row one problem `a+b=c`, digits reversed, operands of 1..N digits, loss on the answer only
# (data.py). Then exact match on a grid of operand lengths up to 4N:
# python train.py config/addition_cpu.py --pe=rope --out_dir=out/addition_rope
# python eval_tasks.py --ckpt out/addition_rope --tasks addition --out out/addition_eval
# Sizing (rope, one thread per run, two runs at a time on the 2-core machine, ~170 ms/step): 6 x 96
# reaches 99.0% (seed 1337) and 98.0% (seed 1338) in-distribution exact match at 1,200 steps.
# At 1,500 steps (results/addition, 3 seeds): 100.0%, 99.8% and 3.4% (seed 1339),
# so 1 of its 3 seeds does not learn the task at this size; TAPE learns with all 3.
# Whether a model learns to align the digits at all is decided by its initial weights: 4 x 128 learns
# with seed 1339 at N = 4 (99.7% at 1,500 steps) and 1337 at N = 6 (99.8%), but not with seed 1338's
# weights (2.5% at N = 4) within 3,000 steps at any lr (1e-3..3e-3), batch (64..256) or head count
# (4, 8) tried; 1338's weights fail on 1337's batches too, and 1337's weights learn on 1338's. 3 x 144
# fails with both seeds. 6 x 96 is the first size tried where seeds 1337 and 1338 both learn.
out_dir = 'out/addition_expe'
arch = 'gpt2'
pe = 'expe'
n_layer = 6
n_head = 4
n_embd = 96
dropout = 0.0
bias = False
task = 'addition'          # every train and val row one problem, no shards read
addition_digits = 4        # N: the grid tests 1..4N = 16 digits
block_size = 16            # 3N + 4: the longest training problem, EOT a + b = c
batch_size = 128
max_iters = 1500
learning_rate = 1e-3
warmup_iters = 100
eval_interval = 250
eval_iters = 20
log_interval = 50
compile = False
