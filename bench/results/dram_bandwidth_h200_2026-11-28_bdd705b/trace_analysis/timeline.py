"""Condensed timeline of a torch.profiler chrome trace: CPU runtime calls per thread and GPU ops per
stream, with runs of the same (thread, name) collapsed. Usage: timeline.py TRACE.gz [min_gap_us]"""
import gzip, json, sys

def load(path):
    t = json.load(gzip.open(path))
    ev = [e for e in t['traceEvents'] if e.get('ph') == 'X' and e.get('cat') in ('cuda_runtime', 'cuda_driver', 'gpu_memcpy', 'kernel', 'gpu_memset')]
    ev.sort(key=lambda e: e['ts'])
    return t, ev

def short(e):
    n = e['name']
    if 'gather' in n: return 'K:gather'
    if 'index_copy' in n: return 'K:index_copy'
    if n.startswith('Memcpy'): return 'M:' + n.split()[1]
    return n

def main():
    path = sys.argv[1]
    _, ev = load(path)
    t0 = ev[0]['ts']
    main_tid = next(e['tid'] for e in ev if e['name'] == 'cudaDeviceSynchronize')
    rows = []
    for e in ev:
        lane = ('GPU s%s' % e['tid']) if e['cat'] in ('gpu_memcpy', 'kernel') else ('main' if e['tid'] == main_tid else 'sub')
        key = (lane, short(e))
        if rows and rows[-1]['key'] == key:
            r = rows[-1]; r['n'] += 1; r['end'] = max(r['end'], e['ts'] + e['dur']); r['busy'] += e['dur']; r['bytes'] += e['args'].get('bytes', 0)
        else:
            rows.append(dict(key=key, start=e['ts'], end=e['ts'] + e['dur'], n=1, busy=e['dur'], bytes=e['args'].get('bytes', 0)))
    # merge same-key rows interleaved with other lanes: print lane-wise collapsing only consecutive same key in global order
    for r in rows:
        print(f"{(r['start']-t0)/1e3:8.3f}-{(r['end']-t0)/1e3:8.3f} {r['key'][0]:8} {r['key'][1]:28} x{r['n']:<4} busy {r['busy']/1e3:7.3f} ms" + (f" {r['bytes']/1e6:8.2f} MB" if r['bytes'] else ''))

if __name__ == '__main__':
    main()
