/// <reference types="vite/client" />

interface ImportMetaEnv {
  /** a WalletConnect Cloud project id: adds WalletConnect next to the browser's wallet (needs @walletconnect/ethereum-provider installed) */
  readonly VITE_WALLETCONNECT_PROJECT_ID?: string;
}
