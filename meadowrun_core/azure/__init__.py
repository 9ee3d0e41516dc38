"""Azure: VMs, Azure Table, Storage Queue, Blob and Key Vault behind the seams."""
