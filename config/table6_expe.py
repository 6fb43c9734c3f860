# The paper's small setting (Table 6, §4.1): 6 layers, 384 wide, 12 heads (head size 32), trained at
# 512 tokens, dropout 0.1, untied embeddings: ~35M parameters with its 32,000 vocab (~49M with GPT-2's BPE).
# A standard (GPT-2 style) decoder; the paper names only the S/M models "Llama".
# Data (§3.1): FineWeb documents of >= 4000 tokens, 700M tokens in all:
#   python prepare.py --dataset fineweb --min_doc_tokens 4000 --max_tokens 700000000
#   python train.py config/table6_expe.py
# The paper's batch size and learning rate (Table 5) are lost: GPT-3 practice, marked [GPT-3].
out_dir = 'out/table6_expe'
data_dir = 'data/fineweb_gpt2'
arch = 'gpt2'
pe = 'expe'
n_layer = 6
n_head = 12
n_embd = 384
dropout = 0.1
bias = False
tie_embeddings = False
block_size = 512
batch_size = 64
gradient_accumulation_steps = 8   # 64 x 8 x 512 = 262,144 tokens per step [GPT-3-like]
max_iters = 2670                  # one epoch of 700M tokens
learning_rate = 1e-3              # [GPT-3] (6e-4 at 125M; smaller models take more)
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.1
eval_interval = 250
eval_iters = 100
