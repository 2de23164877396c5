//! Helpers for local development chains only (anvil, chain id 1337 or 31337): funding a
//! wallet and allowing it on the anchor contract without the owner's key. Every function
//! refuses any other chain, so none of this can touch a public network.

use alloy::{
    network::TransactionBuilder,
    primitives::{Address, U256},
    providers::{Provider, RootProvider},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use secrecy::SecretString;

use crate::{
    ChainError, ChainId, connect_root,
    contract::{CeramicAnchor, ensure_dev_chain},
    error::{from_contract, from_transport},
};

async fn dev_provider(rpc_url: &str) -> Result<RootProvider, ChainError> {
    let provider = connect_root(rpc_url)?;
    let chain = ChainId(provider.get_chain_id().await.map_err(from_transport)?);
    ensure_dev_chain(chain)?;
    Ok(provider)
}

async fn anvil(
    provider: &RootProvider,
    method: &'static str,
    params: serde_json::Value,
) -> Result<(), ChainError> {
    let _: serde_json::Value = provider
        .raw_request(method.into(), params)
        .await
        .map_err(from_transport)?;
    Ok(())
}

/// A new random private key (hex, `0x`-prefixed).
pub fn generate_key() -> SecretString {
    SecretString::from(alloy::hex::encode_prefixed(
        PrivateKeySigner::random().to_bytes(),
    ))
}

/// Give `address` 100 ETH on a dev chain.
pub async fn fund_for_dev(rpc_url: &str, address: Address) -> Result<(), ChainError> {
    let provider = dev_provider(rpc_url).await?;
    let wei = U256::from(10u64).pow(U256::from(20u64));
    anvil(
        &provider,
        "anvil_setBalance",
        serde_json::json!([address, wei]),
    )
    .await
}

/// Owner transactions sent through impersonation in this process take turns: anvil gives
/// concurrent sends from one account the same nonce.
static OWNER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Make `wallet` allowed to anchor on `contract` (dev chain only), by sending `addCas` as the
/// contract's current owner through anvil's impersonation. Nothing happens if it is allowed
/// already.
pub async fn allow_wallet_for_dev(
    rpc_url: &str,
    contract: Address,
    wallet: Address,
) -> Result<(), ChainError> {
    let provider = dev_provider(rpc_url).await?;
    let _turn = OWNER_TURN.lock().await;
    let instance = CeramicAnchor::new(contract, &provider);
    let allowed = instance
        .isServiceAllowed(wallet)
        .call()
        .await
        .map_err(|e| from_contract(contract, e))?;
    let owner = instance
        .owner()
        .call()
        .await
        .map_err(|e| from_contract(contract, e))?;
    if allowed || owner == wallet {
        return Ok(());
    }
    anvil(
        &provider,
        "anvil_impersonateAccount",
        serde_json::json!([owner]),
    )
    .await?;
    if provider.get_balance(owner).await.map_err(from_transport)?
        < U256::from(10u64).pow(U256::from(18u64))
    {
        fund_for_dev(rpc_url, owner).await?;
    }
    let call = CeramicAnchor::addCasCall { _service: wallet }.abi_encode();
    let tx = TransactionRequest::default()
        .with_from(owner)
        .with_to(contract)
        .with_input(call);
    let receipt = provider
        .send_transaction(tx)
        .await
        .map_err(from_transport)?
        .get_receipt()
        .await
        .map_err(|e| ChainError::Rpc(e.to_string()))?;
    let _ = anvil(
        &provider,
        "anvil_stopImpersonatingAccount",
        serde_json::json!([owner]),
    )
    .await;
    if !receipt.status() {
        return Err(ChainError::Contract {
            contract,
            message: format!("addCas({wallet}) reverted"),
        });
    }
    Ok(())
}
