"""The only place that knows about ranks: process groups, TorchRec sharded tables, the DeepSpeed generator
engine, data split by rank and distributed evaluation."""
