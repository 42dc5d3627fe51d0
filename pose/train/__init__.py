"""Training: the paper's recipe (targets, tradeoff loss, Adam + steps), single process or DDP via torchrun."""
