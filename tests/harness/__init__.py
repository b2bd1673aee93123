"""Real parts for development and tests, started on 127.0.0.1 without Docker or kind.

- controlplane: etcd + kube-apiserver built from the Kubernetes Go modules (envtest's model)
- registry: the CNCF distribution registry (Debian's docker-registry), plain HTTP
- buildah: image builds with buildah (vfs storage, chroot isolation), and a small
  Python base image made from a debootstrap root filesystem
"""
