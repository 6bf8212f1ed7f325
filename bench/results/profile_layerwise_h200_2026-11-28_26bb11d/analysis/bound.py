"""Per layer: when the load for layer i lands (stream-14 memcpy end), when the CPU launched that layer's
attention kernel (cudaLaunch* correlated), when the kernel started. Tells whether the main stream waited
for the load (GPU-side wait_event) or for the CPU (launch)."""
import json,gzip,sys
import os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
p=sys.argv[1]
for r in ('v1runner','v2runner'):
  ev=[e for e in json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))['traceEvents'] if e.get('ph')=='X' and 'ts' in e and e.get('cat')!='Trace']
  T0=min(e['ts'] for e in ev); t=lambda x:(x-T0)/1e3
  rt={e['args'].get('correlation'):e for e in ev if e['cat'] in('cuda_runtime','cuda_driver')}
  fa=sorted([e for e in ev if e['cat']=='kernel' and 'flash::enable' in e['name']],key=lambda e:e['ts'])
  ld=sorted([e for e in ev if e['cat']=='gpu_memcpy' and e['args'].get('stream')==14],key=lambda e:e['ts'])
  ldl=[rt.get(e['args'].get('correlation')) for e in ld]
  print('==',r,p,'load memcpy launchers:',set((x['name'] if x else None) for x in ldl))
  lag=[];wl=0
  for i,k in enumerate(fa):
    L=rt.get(k['args'].get('correlation'))
    m=ld[i] if i<len(ld) else None
    lag.append(k['ts']-(L['ts']+L['dur']) if L else 0)
    if i<4 or i%6==0 or i==len(fa)-1:
      print(' L%02d load: issued %.3f lands %.3f | attn launch %.3f kernel start %.3f'%(i, t(ldl[i]['ts']) if m and ldl[i] else -1, t(m['ts']+m['dur']) if m else -1, t(L['ts']) if L else -1, t(k['ts'])))
  print(' attention kernel start - its launch end: median %.1f us, max %.1f us'%(sorted(lag)[len(lag)//2],max(lag)))
  # all kernels: launch->start latency
  ks=[e for e in ev if e['cat'] in('kernel','gpu_memcpy','gpu_memset') and e['args'].get('stream')==7]
  lat=[e['ts']-(rt[e['args']['correlation']]['ts']) for e in ks if e['args'].get('correlation') in rt]
  lat.sort(); print(' main-stream work: launch->start latency median %.1f us, p90 %.1f us (small = GPU starved, waiting for CPU)'%(lat[len(lat)//2],lat[int(.9*len(lat))]))
