"""Kubernetes deployment of the server (Kustomize: `kubectl apply -k serving/k8s/overlays/gpu`).

- base/                   Deployment (init container fetch -> launcher -> Triton), Services, ServiceMonitor, HPA
- overlays/gpu, cpu       the two variants (image tag, instance kind, resources, GPU limit)
- components/model-pvc    optional: exported versions on a PersistentVolumeClaim instead of a URL
- prometheus-adapter/     the custom-metric rule the HPA scales on (avg_time_queue_us)
- schemas/                the ServiceMonitor CRD schema the tests validate against
- fetch_model.py          `python -m serving.k8s.fetch_model`: the init container's command
The image: serving/docker/Dockerfile. Tests: tests/test_k8s.py.
"""
