// Vite builds the UI into dist/ (served by `tamp serve`, or from the team's bucket behind
// CloudFront). The editor (CodeMirror) is split into its own chunk, loaded on the policy page.
import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  plugins: [react()],
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 800 },
  server: { proxy: { '^/(jobs|models|projects|policies|policy-templates|reports|artifacts|objects|uploads|tokens|audit|healthz|openapi.json|config.json)': 'http://127.0.0.1:8470' } },
});
