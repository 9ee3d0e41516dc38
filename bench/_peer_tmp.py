import time, statistics
from concurrent.futures import ProcessPoolExecutor
from bench.workloads import noop, busy

def warm(call, n=50):
    for i in range(5): call(i)
    ts=[]
    for i in range(n):
        t=time.perf_counter(); call(i); ts.append(time.perf_counter()-t)
    ts.sort(); return ts[n//2]*1000, ts[int(n*0.95)]*1000

def main():
    t=time.perf_counter()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200*2**20)
    f = ray.remote(noop); b = ray.remote(busy)
    print("ray first", ray.get(f.remote(1)), time.perf_counter()-t)
    print("ray warm", warm(lambda i: ray.get(f.remote(i))))
    t=time.perf_counter(); ray.get([f.remote(i) for i in range(2000)]); print("ray 2000/s", 2000/(time.perf_counter()-t))
    t=time.perf_counter(); ray.get([b.remote(0.05) for i in range(40)]); print("ray busy40", time.perf_counter()-t)
    ray.shutdown()
    t=time.perf_counter()
    from distributed import Client, LocalCluster
    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    c = Client(cl)
    print("dask first", c.submit(noop,1,pure=False).result(), time.perf_counter()-t)
    print("dask warm", warm(lambda i: c.submit(noop,i,pure=False).result()))
    t=time.perf_counter(); c.gather(c.map(noop, range(2000), pure=False)); print("dask 2000/s", 2000/(time.perf_counter()-t))
    t=time.perf_counter(); c.gather(c.map(busy, [0.05]*40, pure=False)); print("dask busy40", time.perf_counter()-t)
    c.close(); cl.close()
    t=time.perf_counter()
    ex = ProcessPoolExecutor(max_workers=2)
    print("ppe first", ex.submit(noop,1).result(), time.perf_counter()-t)
    print("ppe warm", warm(lambda i: ex.submit(noop,i).result()))
    t=time.perf_counter(); list(ex.map(noop, range(2000))); print("ppe 2000/s", 2000/(time.perf_counter()-t))
    t=time.perf_counter(); list(ex.map(busy, [0.05]*40)); print("ppe busy40", time.perf_counter()-t)
    ex.shutdown()
if __name__ == "__main__":
    main()
