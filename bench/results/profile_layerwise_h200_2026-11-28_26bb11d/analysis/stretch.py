"""Within the forward's layer loop (first qkv addmm .. last attention), split main-thread wall time into
time inside top-level ops (C++/CUDA-runtime, GIL released in torch bindings) and time between them
(Python: module __call__, vLLM glue, ucm hooks). A GIL-holding competitor stretches the 'between' part
(+ waits to re-take the GIL after each op); a uniformly slower core stretches both alike."""
import json,gzip,sys
import os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
for p in sys.argv[1:] or ['full_4000','hit100_4000','hit80_4000','hit100_16000','hit80_16000']:
  out=[]
  for r in ('v1runner','v2runner'):
    ev=[e for e in json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))['traceEvents'] if e.get('ph')=='X' and e.get('cat') in ('cpu_op','cuda_runtime','cuda_driver')]
    ev.sort(key=lambda e:(e['ts'],-e['dur']))
    q=[e for e in ev if e['name']=='aten::addmm']; a=[e for e in ev if e['name']=='vllm::unified_attention_with_output']
    lo,hi=q[0]['ts'],a[-1]['ts']+a[-1]['dur']
    top=[];end=-1
    for e in ev:
      if e['ts']<lo or e['ts']>hi: continue
      if e['ts']>=end: top.append(e); end=e['ts']+e['dur']
    inside=sum(e['dur'] for e in top); wall=hi-lo
    # nested leaf-ish: as_strided / cudaLaunchKernel medians
    med=lambda n: sorted(e['dur'] for e in ev if e['name']==n)[len([e for e in ev if e['name']==n])//2]
    out.append((wall/1e3,inside/1e3,(wall-inside)/1e3,len(top),med('aten::as_strided'),med('cudaLaunchKernel')))
  v1,v2=out
  print('%-13s V1 wall %.2f in-ops %.2f between %.2f (n=%d) as_strided %.2fus launch %.1fus | V2 wall %.2f in-ops %.2f between %.2f (n=%d) as_strided %.2fus launch %.1fus | ratio in %.2f between %.2f'%((p,)+v1+v2+(v1[1]/v2[1],v1[2]/v2[2])))
