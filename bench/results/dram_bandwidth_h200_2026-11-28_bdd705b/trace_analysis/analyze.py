"""Where a profiled ucm dump/load spends its wall time (torch.profiler chrome traces, gzipped).

Per trace: the threads (main = the caller, the one with cudaDeviceSynchronize; sub = the dump
submitter thread), their clusters of CUDA runtime calls, the GPU's link work (DtoH/HtoD memcpys and
UVA index_copy kernels, which read/write pinned memory over PCIe), idle gaps of the link between its
first and last op, and for each gap who launched the op that ended it and what each thread did
during the gap. Usage, from the repo root: python <this file> [TRACE.gz ...] (default: every trace of
this results folder)."""
import collections, glob, gzip, json, os, sys

sys.path.insert(0, os.getcwd())
from bench.trace_summary import interval_union as union  # noqa: E402

CHECK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clip_sum(iv, lo, hi):
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in iv)


def is_link(e):
    """GPU ops that move bytes over PCIe: memcpys between pinned host and device, UVA kernels
    (index_copy into the pinned pool on dumps; index_select from it on UVA loads)."""
    if e['cat'] == 'gpu_memcpy':
        return 'Pinned' in e['name'] and e['args'].get('bytes', 0) > 64 << 10
    return e['cat'] == 'kernel' and ('index_copy' in e['name'] or 'gather' in e['name']) and e['dur'] > 30


def analyze(path, top=6, verbose=True):
    t = json.load(gzip.open(path))
    evs = [e for e in t['traceEvents'] if e.get('ph') == 'X' and isinstance(e.get('ts'), (int, float))]
    rt = sorted((e for e in evs if e.get('cat') in ('cuda_runtime', 'cuda_driver')), key=lambda e: e['ts'])
    gpu = sorted((e for e in evs if e.get('cat') in ('gpu_memcpy', 'kernel', 'gpu_memset')), key=lambda e: e['ts'])
    ops = sorted((e for e in evs if e.get('cat') == 'cpu_op'), key=lambda e: e['ts'])
    main_tid = next(e['tid'] for e in rt if e['name'] == 'cudaDeviceSynchronize')
    first_sync = next(e for e in rt if e['name'] == 'cudaDeviceSynchronize')
    t0 = first_sync['ts'] + first_sync['dur']  # the profiled fn starts after the sync
    tids = sorted({e['tid'] for e in rt})
    lane = {tid: ('main' if tid == main_tid else 'sub') for tid in tids}
    # the end of the profiled call: the last runtime call of the main thread before the final sync, or the last GPU op
    last_sync = [e for e in rt if e['name'] == 'cudaDeviceSynchronize' and e is not first_sync]
    main_calls = [e for e in rt if e['tid'] == main_tid and e is not first_sync and e not in last_sync]
    t_end = max([e['ts'] + e['dur'] for e in main_calls] + [e['ts'] + e['dur'] for e in gpu])
    wall = t_end - t0
    ms = lambda us: us / 1e3
    at = lambda ts: (ts - t0) / 1e3
    res = dict(trace=path.replace(CHECK + '/', ''), wall_ms=round(ms(wall), 2))
    corr = {e['args'].get('correlation'): e for e in rt}

    # GPU streams
    streams = collections.defaultdict(list)
    for e in gpu:
        streams[e['tid']].append(e)
    sres = {}
    for s, es in streams.items():
        u = union([(e['ts'], e['ts'] + e['dur']) for e in es])
        kinds = collections.Counter(('memcpy ' + e['name'].split()[1]) if e['cat'] == 'gpu_memcpy' else
                                    ('K:index_copy' if 'index_copy' in e['name'] else 'K:gather' if 'gather' in e['name'] else 'K:other') for e in es)
        byt = sum(e['args'].get('bytes', 0) for e in es)
        sres[s] = dict(n=len(es), busy_ms=round(ms(sum(b - a for a, b in u)), 2), first=round(at(u[0][0]), 2), last=round(at(u[-1][1]), 2),
                       kinds=dict(kinds), memcpy_MB=round(byt / 1e6, 1))
    res['streams'] = sres
    link = [e for e in gpu if is_link(e)]
    lu = union([(e['ts'], e['ts'] + e['dur']) for e in link])
    allu = union([(e['ts'], e['ts'] + e['dur']) for e in gpu])
    lf, ll = lu[0][0], lu[-1][1]
    res['link'] = dict(first_ms=round(at(lf), 2), last_ms=round(at(ll), 2), span_ms=round(ms(ll - lf), 2),
                       busy_ms=round(ms(sum(b - a for a, b in lu)), 2),
                       idle_in_span_ms=round(ms(ll - lf - sum(b - a for a, b in lu)), 2),
                       before_first_ms=round(at(lf), 2), after_last_ms=round(ms(t_end - ll), 2),
                       gpu_any_busy_ms=round(ms(sum(b - a for a, b in allu)), 2))
    # per-thread runtime activity: clusters (calls less than 150 us apart), and calls by name
    thr = {}
    for tid in tids:
        cs = [e for e in rt if e['tid'] == tid and e is not first_sync and e not in last_sync]
        byname = collections.Counter()
        for e in cs:
            byname[e['name']] += 1
        clusters = []
        for e in cs:
            if e['name'] == 'cudaEventQuery' and lane[tid] == 'main':
                kind = 'poll'
            else:
                kind = 'work'
            if clusters and e['ts'] - clusters[-1][1] < 150 and clusters[-1][2] == kind:
                clusters[-1][1] = max(clusters[-1][1], e['ts'] + e['dur']); clusters[-1][3] += 1
            else:
                clusters.append([e['ts'], e['ts'] + e['dur'], kind, 1])
        thr[lane[tid]] = dict(calls=len(cs), first=round(at(cs[0]['ts']), 2) if cs else None,
                              last=round(at(cs[-1]['ts'] + cs[-1]['dur']), 2) if cs else None,
                              runtime_ms=round(ms(sum(e['dur'] for e in cs)), 2), by_name=dict(byname.most_common(8)),
                              clusters=[(round(at(a), 2), round(at(b), 2), k, n) for a, b, k, n in clusters if n > 2 or b - a > 100 or k == 'work'])
    res['threads'] = thr
    # cpu_op coverage of the main thread (top-level ops only): time in torch ops vs pure Python
    if ops:
        top_ops = union([(e['ts'], e['ts'] + e['dur']) for e in ops if e['tid'] == main_tid])
        res['main_cpu_op_ms'] = round(ms(clip_sum(top_ops, t0, t_end)), 2)
        res['main_cpu_op_first_ms'] = round(at(top_ops[0][0]), 2)
    # link gaps
    gaps = [(a[1], b[0]) for a, b in zip(lu, lu[1:]) if b[0] - a[1] > 20]
    gaps_rows = []
    for g0, g1 in gaps:
        nxt = next(e for e in link if e['ts'] >= g1 - 0.01)
        launcher = corr.get(nxt['args'].get('correlation'))
        # also: the last GPU op of the op's own stream that precedes it (a wait between streams?)
        row = dict(start=round(at(g0), 3), ms=round(ms(g1 - g0), 3), next=('memcpy' if nxt['cat'] == 'gpu_memcpy' else 'K:' + ('index_copy' if 'index_copy' in nxt['name'] else 'gather')))
        if launcher is not None:
            row['launched_by'] = lane[launcher['tid']]
            row['launch_at'] = round(at(launcher['ts']), 3)
            row['queue_us'] = round(nxt['ts'] - (launcher['ts'] + launcher['dur']), 1)
        else:
            # batched driver call (not traced): the thread whose runtime calls precede it most closely
            prev = [e for e in rt if e['ts'] <= nxt['ts'] and e['name'] not in ('cudaEventQuery',)]
            row['launched_by'] = '?(driver) after ' + (lane[prev[-1]['tid']] + ' ' + prev[-1]['name'] if prev else '')
        for tid in tids:
            cs = [e for e in rt if e['tid'] == tid and e['ts'] < g1 and e['ts'] + e['dur'] > g0]
            n_poll = sum(e['name'] == 'cudaEventQuery' for e in cs)
            row[lane[tid]] = f"{len(cs)} calls ({n_poll} EventQuery, {ms(sum(e['dur'] for e in cs)):.3f} ms in CUDA)"
        # what the GPU did in the gap (non-link ops: gathers, index uploads)
        other = [e for e in gpu if not is_link(e) and e['ts'] < g1 and e['ts'] + e['dur'] > g0]
        row['gpu_other'] = f"{len(other)} ops {ms(sum(e['dur'] for e in other)):.3f} ms"
        if ops:
            topo = [e for e in ops if e['tid'] == main_tid and e['ts'] < g1 and e['ts'] + e['dur'] > g0]
            row['main_ops_ms'] = round(ms(clip_sum(union([(e['ts'], e['ts'] + e['dur']) for e in topo]), g0, g1)), 3)
        gaps_rows.append(row)
    res['link']['n_gaps>20us'] = len(gaps_rows)
    res['link']['gap_sum_ms'] = round(sum(r['ms'] for r in gaps_rows), 2)
    by_launcher = collections.Counter()
    for r in gaps_rows:
        by_launcher[r.get('launched_by', '?')[:4]] += r['ms']
    res['link']['gap_ms_by_launcher'] = {k: round(v, 2) for k, v in by_launcher.items()}
    res['largest_gaps'] = sorted(gaps_rows, key=lambda r: -r['ms'])[:top]
    return res


if __name__ == '__main__':
    paths = sys.argv[1:] or sorted(glob.glob(CHECK + '/prof_*/*.trace.json.gz'))
    out = [analyze(p) for p in paths]
    json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'analysis.json'), 'w'), indent=1)
    for r in out:
        print(json.dumps(r, indent=None)[:6000])
        print()
