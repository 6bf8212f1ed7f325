"""Table: benchmark time vs the profiled run's decomposition (analysis.json from analyze.py)."""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK = os.path.dirname(HERE)
NB = 1170 * 28 * 32768
an = {r['trace']: r for r in json.load(open(os.path.join(HERE, 'analysis.json')))}
print(f"{'config':14} {'layout':10} {'dir':4} | {'bench ms':>8} {'ideal':>6} {'loss':>5} | {'prof wall':>9} {'pre-1st':>7} {'busy':>6} {'GB/s@busy':>9} {'idle-in':>7} {'tail':>5} {'max gap':>7} {'EvQuery(main)':>13}")
for d in (0, 1):
    for b in (0, 1):
        bench = json.load(open(f'{CHECK}/bw_defer{d}_batch{b}.json'))
        for row in bench['rows']:
            if 'profile' not in row:
                continue
            lay = row['layout']
            for dirn, key, plain in (('dump', 'dump_gbps', 'plain_d2h_gbps'), ('load', 'load_gbps', 'plain_h2d_gbps')):
                t = f"prof_defer{d}_batch{b}/{lay.replace('/', '_')}_{dirn}.trace.json.gz"
                r = an.get(t)
                ms = NB / row[key] / 1e6
                ideal = NB / bench[plain] / 1e6
                if r is None:
                    print(f"defer{d} batch{b}  {lay:10} {dirn} | {ms:8.2f} {ideal:6.2f} {ms-ideal:5.2f} | (no trace)")
                    continue
                L = r['link']
                mg = r['largest_gaps'][0]['ms'] if r['largest_gaps'] else 0
                evq = r['threads']['main']['by_name'].get('cudaEventQuery', 0)
                print(f"defer{d} batch{b}  {lay:10} {dirn} | {ms:8.2f} {ideal:6.2f} {ms-ideal:5.2f} | {r['wall_ms']:9.2f} {L['before_first_ms']:7.2f} {L['busy_ms']:6.2f} {NB/L['busy_ms']/1e6:9.1f} {L['idle_in_span_ms']:7.2f} {L['after_last_ms']:5.2f} {mg:7.2f} {evq:13}")
