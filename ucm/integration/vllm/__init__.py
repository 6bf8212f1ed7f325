"""ucm as a vLLM V1 KV connector.

Select it as users do::

    kv_transfer_config = {
        "kv_connector": "UnifiedCacheConnectorV1",
        "kv_connector_module_path": "ucm.integration.vllm.uc_connector",
        "kv_role": "kv_both",
        "kv_connector_extra_config": {"ucm_connector_name": "UcmDramStore",
                                      "ucm_connector_config": {"max_cache_size": 5368709120}},
    }

Files, one role each: ``uc_connector`` (the class vLLM loads, thin), ``settings`` (the extra
config), ``keys`` (block keys), ``metadata`` (scheduler -> worker plans), ``scheduler`` /
``worker`` (the two sides), ``stats`` (vLLM connector stats and Prometheus), ``stores`` (one
store per process, shared by both sides), ``compat`` (every difference between vLLM versions).
Only this package imports vLLM.
"""
