from instructglm.train.methods.full.method import FullMethod

__all__ = ["FullMethod"]
