"""Phase boundaries (ms from trace start) of the profiled step, V1 vs V2: start -> forward (aten::embedding)
-> last attention end -> lm_head (last aten::linear) -> end of trace; plus CPU-busy time in each phase."""
import json,gzip,sys
import os
B = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + '/'
def phases(r,p):
  ev=[e for e in json.load(gzip.open(B+r+'/%s_1.trace.json.gz'%p))['traceEvents'] if e.get('ph')=='X' and 'ts' in e and e.get('cat')!='Trace']
  T0=min(e['ts'] for e in ev); t=lambda x:(x-T0)/1e3
  cpu=sorted([e for e in ev if e['cat'] in('cpu_op','cuda_runtime','cuda_driver')],key=lambda e:e['ts'])
  emb=[e for e in cpu if e['name']=='aten::embedding'][0]['ts']
  att=[e for e in cpu if e['name']=='vllm::unified_attention_with_output'][-1]; attE=att['ts']+att['dur']
  lm=[e for e in cpu if e['name']=='aten::linear'][-1]['ts']
  q=[e for e in cpu if e['name']=='cudaEventQuery' and e['ts']>attE-1]
  end=max(e['ts']+e['dur'] for e in ev)
  gm=[e for e in ev if e['cat'] in('kernel','gpu_memcpy','gpu_memset') and e['args'].get('stream')==7]
  return dict(forward_start=t(emb),layers_end=t(attE),ucm_post_first_query=t(q[0]['ts']) if q else -1,lm_head=t(lm),main_stream_last=t(max(e['ts']+e['dur'] for e in gm)),trace_end=t(end))
for p in sys.argv[1:] or ['hit100_4000','hit80_4000','hit100_16000','hit80_16000','full_4000']:
  a,b=phases('v1runner',p),phases('v2runner',p)
  print(p); [print('   %-22s V1 %7.3f  V2 %7.3f  diff %6.3f'%(k,a[k],b[k],a[k]-b[k])) for k in a]
