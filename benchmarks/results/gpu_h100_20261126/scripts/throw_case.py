import sys, torch, drloss_cuda, drloss_cuda.ops
case = sys.argv[1]
hyper = (1.0, 0.1, 6.0, 4.0, 0.5, 0)
op = torch.ops.drloss_cuda.sigmoid_dr_loss_forward
try:
    if case == "cpu_op":
        op(torch.randn(3), torch.zeros((), dtype=torch.long), *hyper)
    elif case == "cpu_op_after_cuda_init":
        torch.zeros(1, device="cuda"); torch.cuda.synchronize()
        op(torch.randn(3), torch.zeros((), dtype=torch.long), *hyper)
    elif case == "cuda_op":
        op(torch.randn(3, device="cuda"), torch.zeros((), dtype=torch.long, device="cuda"), *hyper)
    elif case == "cuda_op_valid_then_bad":
        op(torch.randn(2, 5, 3, device="cuda"), torch.zeros(2, 5, dtype=torch.long, device="cuda"), *hyper); torch.cuda.synchronize()
        op(torch.randn(3, device="cuda"), torch.zeros((), dtype=torch.long, device="cuda"), *hyper)
    elif case == "aten_cuda":
        torch.randn(3, device="cuda") + torch.randn(4, device="cuda")
    elif case == "cuda_op_redispatch_cpu_tensors":
        op.default.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), torch.randn(3), torch.zeros((), dtype=torch.long), *hyper)
    print(case, "NO ERROR RAISED")
except RuntimeError as e:
    print(case, "raised RuntimeError:", str(e).splitlines()[0][:120])
