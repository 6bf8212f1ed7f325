"""Compare CPU-side durations of identical ops across runners/passes (CPU slowness indicator)."""
import json,gzip,collections,sys,os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
names=['aten::linear','aten::mm','_vllm_fa3_C::fwd','cudaLaunchKernel','cuLaunchKernelEx','aten::empty','aten::slice','aten::as_strided','_C::fused_add_rms_norm']
for p in ['full_4000','hit100_4000','hit80_4000','full_16000','hit100_16000','hit80_16000']:
  row=[]
  for r in ('v1runner','v2runner'):
    ev=json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))['traceEvents']
    c=collections.defaultdict(list)
    for e in ev:
      if e.get('ph')=='X' and e.get('name') in names: c[e['name']].append(e['dur'])
    row.append({n:(sorted(v)[len(v)//2] if v else 0) for n,v in c.items()})
  print(p,' '.join('%s %.1f/%.1f'%(n.split('::')[-1],row[0].get(n,0),row[1].get(n,0)) for n in names))
